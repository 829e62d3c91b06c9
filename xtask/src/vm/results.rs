//! The guest → host result channel: the guest's second serial port (ttyS1, raw mode)
//! carries marker lines and the output of each scenario step between them:
//!
//! ```text
//! @@VMATRACE booted 7.3.4+deb13-cloud-amd64@@
//! @@VMATRACE begin probes@@
//! ...stdout of the step...
//! @@VMATRACE end probes rc=0@@
//! @@VMATRACE done@@
//! ```
//!
//! Kernel messages go to ttyS0 only, so they cannot interleave with step output.

pub const MARK: &str = "@@VMATRACE ";
pub const MARK_END: &str = "@@";

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Section {
    pub name: String,
    /// Exit status; `None` when the end marker never came (guest died or timed out).
    pub rc: Option<i32>,
    pub body: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GuestResults {
    /// `uname -r` reported at boot; `None` when init never ran.
    pub booted: Option<String>,
    pub sections: Vec<Section>,
    /// The scenario ran to the end.
    pub done: bool,
}

impl GuestResults {
    pub fn section(&self, name: &str) -> Option<&Section> {
        self.sections.iter().find(|s| s.name == name)
    }
}

fn marker(line: &str) -> Option<&str> {
    line.trim_end().strip_prefix(MARK)?.strip_suffix(MARK_END)
}

pub fn parse(raw: &[u8]) -> GuestResults {
    let text = String::from_utf8_lossy(raw);
    let mut r = GuestResults::default();
    let mut open: Option<Section> = None;
    for line in text.split('\n') {
        let line = line.strip_suffix('\r').unwrap_or(line);
        match marker(line) {
            Some(m) => {
                let (word, rest) = m.split_once(' ').unwrap_or((m, ""));
                match word {
                    "booted" => r.booted = Some(rest.trim().to_string()),
                    "begin" => {
                        // A begin inside a section means the previous end was lost.
                        if let Some(s) = open.take() {
                            r.sections.push(s);
                        }
                        open = Some(Section {
                            name: rest.trim().to_string(),
                            ..Default::default()
                        });
                    }
                    "end" => {
                        let (name, rc) = rest.rsplit_once(" rc=").unwrap_or((rest, ""));
                        if let Some(mut s) = open.take() {
                            if s.name == name.trim() {
                                s.rc = rc.trim().parse().ok();
                            }
                            s.body = s.body.trim_end().to_string();
                            r.sections.push(s);
                        }
                    }
                    "done" => r.done = true,
                    _ => {}
                }
            }
            None => {
                if let Some(s) = open.as_mut() {
                    s.body.push_str(line);
                    s.body.push('\n');
                }
            }
        }
    }
    if let Some(mut s) = open.take() {
        s.body = s.body.trim_end().to_string();
        r.sections.push(s);
    }
    r
}

/// The JSON object a step printed (its output may start with log lines).
pub fn json_of(step: &str, body: &str) -> Result<serde_json::Value, String> {
    // Tolerate log lines before the JSON object: it starts at the first line opening '{'.
    let start = body
        .lines()
        .position(|l| l.starts_with('{'))
        .ok_or_else(|| format!("{step}: no JSON in the output ({} bytes)", body.len()))?;
    let json: String = body.lines().skip(start).collect::<Vec<_>>().join("\n");
    serde_json::from_str(&json).map_err(|e| format!("{step}: output is not valid JSON: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sections_and_losses() {
        let raw = b"noise\r\n@@VMATRACE booted 7.3.4+deb13-cloud-amd64@@\r\n\
            @@VMATRACE begin probes@@\n{\"plan\":\n 1}\n\n@@VMATRACE end probes rc=0@@\n\
            @@VMATRACE begin stress@@\npartial output";
        let r = parse(raw);
        assert_eq!(r.booted.as_deref(), Some("7.3.4+deb13-cloud-amd64"));
        assert!(!r.done);
        let p = r.section("probes").expect("probes");
        assert_eq!(p.rc, Some(0));
        assert_eq!(p.body, "{\"plan\":\n 1}");
        let s = r.section("stress").expect("stress");
        assert_eq!(s.rc, None, "no end marker: the guest died mid-step");
        assert_eq!(s.body, "partial output");
    }

    #[test]
    fn done_and_failed_rc() {
        let r = parse(b"@@VMATRACE begin x@@\n@@VMATRACE end x rc=137@@\n@@VMATRACE done@@\n");
        assert!(r.done);
        assert_eq!(r.section("x").map(|s| s.rc), Some(Some(137)));
        assert!(parse(b"").booted.is_none());
    }
}
