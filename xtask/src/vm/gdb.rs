//! A client of QEMU's gdbstub (the GDB remote serial protocol): `$payload#checksum`
//! packets, each acknowledged with `+`. Just what the fault injector needs: stop the
//! guest, software breakpoints (under TCG QEMU checks them when it translates guest code,
//! so guest memory is not touched), continue, step one vCPU, and read or write registers
//! and memory of the vCPU that stopped. While the guest is stopped every vCPU is, so a
//! read-modify-write of guest memory is atomic for the guest.

use std::{
    collections::VecDeque,
    io::{Read, Write},
    net::TcpStream,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};

/// x86-64 register numbers of QEMU's `g`/`P` packets.
pub mod reg {
    pub const RSI: usize = 4;
    pub const RDI: usize = 5;
    pub const RSP: usize = 7;
    pub const RIP: usize = 16;
}

pub struct Gdb {
    stream: TcpStream,
    /// Bytes read but not consumed yet.
    buf: VecDeque<u8>,
}

/// Where the guest stopped: the vCPU (gdb thread id, 1-based) and its registers.
#[derive(Clone, Debug)]
pub struct Stop {
    pub thread: u32,
    /// rax … r15, rip (17 registers).
    pub regs: [u64; 17],
    /// The GS base: in the kernel, this CPU's per-CPU offset (`%gs:current_task`).
    pub gs_base: u64,
}

impl Stop {
    pub fn rip(&self) -> u64 {
        self.regs[reg::RIP]
    }
    pub fn rsp(&self) -> u64 {
        self.regs[reg::RSP]
    }
}

fn checksum(payload: &[u8]) -> u8 {
    payload.iter().fold(0u8, |a, b| a.wrapping_add(*b))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> anyhow::Result<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        bail!("odd hex length in {s:?}");
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).with_context(|| format!("hex {s:?}")))
        .collect()
}

/// Byte offset of `gs_base` in QEMU's x86-64 `g` reply: 16 GPRs and rip (8 bytes each),
/// eflags (4), six segment selectors (4 each), `fs_base` (8).
const GS_BASE_AT: usize = 17 * 8 + 4 + 6 * 4 + 8;

/// The 17 registers of a `g` reply (little-endian, 8 bytes each), and the GS base.
pub fn parse_regs(g: &str) -> anyhow::Result<([u64; 17], u64)> {
    let bytes = unhex(g.get(..(GS_BASE_AT + 8) * 2).context("short `g` reply")?)?;
    let mut regs = [0u64; 17];
    for (i, r) in regs.iter_mut().enumerate() {
        *r = u64::from_le_bytes(bytes[i * 8..i * 8 + 8].try_into()?);
    }
    let gs = u64::from_le_bytes(bytes[GS_BASE_AT..GS_BASE_AT + 8].try_into()?);
    Ok((regs, gs))
}

/// The thread of a stop reply (`T05thread:01;…`, or `S05`: thread 1).
pub fn stop_thread(reply: &str) -> anyhow::Result<Option<u32>> {
    match reply.as_bytes().first() {
        Some(b'T') => {}
        Some(b'S') => return Ok(Some(1)),
        _ => return Ok(None),
    }
    for field in reply[3..].split(';') {
        if let Some(t) = field.strip_prefix("thread:") {
            // `p<pid>.<tid>` with the multiprocess extension, else `<tid>`.
            let t = t.rsplit('.').next().unwrap_or(t);
            return Ok(Some(u32::from_str_radix(t, 16).context("thread id")?));
        }
    }
    Ok(Some(1))
}

impl Gdb {
    /// Connect to QEMU's `-gdb tcp:127.0.0.1:PORT`, retrying until it listens.
    pub fn connect(port: u16, within: Duration) -> anyhow::Result<Self> {
        let t0 = Instant::now();
        loop {
            match TcpStream::connect(("127.0.0.1", port)) {
                Ok(stream) => {
                    stream.set_nodelay(true)?;
                    return Ok(Gdb {
                        stream,
                        buf: VecDeque::new(),
                    });
                }
                Err(e) if t0.elapsed() > within => {
                    return Err(e).with_context(|| format!("connecting to the gdbstub on {port}"));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    fn send(&mut self, payload: &str) -> anyhow::Result<()> {
        let p = payload.as_bytes();
        let pkt = format!("${payload}#{:02x}", checksum(p));
        for _ in 0..3 {
            self.stream.write_all(pkt.as_bytes())?;
            match self.read_byte(Duration::from_secs(10))? {
                b'+' => return Ok(()),
                b'-' => continue,
                other => {
                    // Not an ack: keep it for the reply reader.
                    self.buf.push_front(other);
                    return Ok(());
                }
            }
        }
        bail!("gdbstub refused packet {payload:?} three times")
    }

    fn read_byte(&mut self, timeout: Duration) -> anyhow::Result<u8> {
        if let Some(b) = self.buf.pop_front() {
            return Ok(b);
        }
        self.stream.set_read_timeout(Some(timeout))?;
        let mut b = [0u8; 4096];
        let n = self
            .stream
            .read(&mut b)
            .context("reading from the gdbstub")?;
        if n == 0 {
            bail!("the gdbstub closed the connection (QEMU exited?)");
        }
        self.buf.extend(&b[1..n]);
        Ok(b[0])
    }

    /// The next packet's payload (acknowledged).
    fn recv(&mut self, timeout: Duration) -> anyhow::Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!("no reply from the gdbstub within {timeout:?}");
            }
            if self.read_byte(left)? != b'$' {
                continue;
            }
            let mut payload = Vec::new();
            loop {
                match self.read_byte(Duration::from_secs(10))? {
                    b'#' => break,
                    b => payload.push(b),
                }
            }
            let sum = [
                self.read_byte(Duration::from_secs(10))?,
                self.read_byte(Duration::from_secs(10))?,
            ];
            let ok = std::str::from_utf8(&sum)
                .ok()
                .and_then(|s| u8::from_str_radix(s, 16).ok())
                == Some(checksum(&payload));
            self.stream.write_all(if ok { b"+" } else { b"-" })?;
            if ok {
                return Ok(String::from_utf8_lossy(&payload).into_owned());
            }
        }
    }

    /// Send a packet and return its reply. A stop reply in between (QEMU repeats one
    /// when a client attaches) is not the answer: no answer to these requests starts
    /// with `T` or `S` (they are `OK`, `E..` or hex).
    fn request(&mut self, payload: &str) -> anyhow::Result<String> {
        self.send(payload)?;
        loop {
            let r = self.recv(Duration::from_secs(10))?;
            if !(r.starts_with('T') || r.starts_with('S')) {
                return Ok(r);
            }
        }
    }

    fn expect_ok(&mut self, payload: &str) -> anyhow::Result<()> {
        match self.request(payload)?.as_str() {
            "OK" => Ok(()),
            other => bail!("gdbstub answered {other:?} to {payload:?}"),
        }
    }

    /// Stop the running guest (Ctrl-C) and wait for the stop reply.
    pub fn interrupt(&mut self) -> anyhow::Result<Stop> {
        self.stream.write_all(&[0x03])?;
        self.wait_stop(Duration::from_secs(10))?
            .context("the guest did not stop after an interrupt")
    }

    /// Ask where the guest is stopped (after connecting: QEMU stops it on attach).
    pub fn status(&mut self) -> anyhow::Result<Stop> {
        self.send("?")?;
        self.wait_stop(Duration::from_secs(10))?
            .context("no stop reply to `?`")
    }

    /// Wait for a stop reply; `None` when none came within `timeout` (still running).
    pub fn wait_stop(&mut self, timeout: Duration) -> anyhow::Result<Option<Stop>> {
        let reply = match self.recv(timeout) {
            Ok(r) => r,
            Err(e) if e.to_string().starts_with("no reply") => return Ok(None),
            Err(e) => return Err(e),
        };
        if reply.starts_with('W') || reply.starts_with('X') {
            bail!("the guest exited ({reply})");
        }
        let thread = stop_thread(&reply)?.with_context(|| format!("odd stop reply {reply:?}"))?;
        // Registers of the vCPU that stopped.
        self.expect_ok(&format!("Hg{thread:x}"))?;
        let (regs, gs_base) = parse_regs(&self.request("g")?)?;
        Ok(Some(Stop {
            thread,
            regs,
            gs_base,
        }))
    }

    pub fn insert_breakpoint(&mut self, addr: u64) -> anyhow::Result<()> {
        self.expect_ok(&format!("Z0,{addr:x},1"))
    }

    pub fn remove_breakpoint(&mut self, addr: u64) -> anyhow::Result<()> {
        self.expect_ok(&format!("z0,{addr:x},1"))
    }

    /// Resume every vCPU (no reply until the next stop).
    pub fn resume(&mut self) -> anyhow::Result<()> {
        self.send("c")
    }

    /// Step vCPU `thread` over the breakpoint at its rip with the others stopped, then put
    /// the breakpoint back.
    pub fn step_over(&mut self, stop: &Stop) -> anyhow::Result<()> {
        self.remove_breakpoint(stop.rip())?;
        self.send(&format!("vCont;s:{:x}", stop.thread))?;
        self.wait_stop(Duration::from_secs(10))?
            .context("no stop after a single step")?;
        self.insert_breakpoint(stop.rip())
    }

    pub fn read_mem(&mut self, addr: u64, len: usize) -> anyhow::Result<Vec<u8>> {
        let r = self.request(&format!("m{addr:x},{len:x}"))?;
        if r.starts_with('E') {
            bail!("reading {len} bytes at {addr:#x}: {r}");
        }
        unhex(&r)
    }

    pub fn write_mem(&mut self, addr: u64, bytes: &[u8]) -> anyhow::Result<()> {
        self.expect_ok(&format!("M{addr:x},{:x}:{}", bytes.len(), hex(bytes)))
    }

    pub fn read_u32(&mut self, addr: u64) -> anyhow::Result<u32> {
        Ok(u32::from_le_bytes(self.read_mem(addr, 4)?[..4].try_into()?))
    }

    pub fn read_u64(&mut self, addr: u64) -> anyhow::Result<u64> {
        Ok(u64::from_le_bytes(self.read_mem(addr, 8)?[..8].try_into()?))
    }

    pub fn write_u32(&mut self, addr: u64, v: u32) -> anyhow::Result<()> {
        self.write_mem(addr, &v.to_le_bytes())
    }

    /// Let the guest go and close the connection (QEMU resumes a detached guest).
    pub fn detach(mut self) -> anyhow::Result<()> {
        self.request("D").map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packets_and_replies_parse() {
        assert_eq!(checksum(b"g"), 0x67);
        assert_eq!(stop_thread("T05thread:02;").unwrap(), Some(2));
        assert_eq!(stop_thread("T05thread:p01.0a;").unwrap(), Some(10));
        assert_eq!(stop_thread("S05").unwrap(), Some(1));
        assert_eq!(stop_thread("OK").unwrap(), None);
        let mut g = String::new();
        for i in 0..17u64 {
            g.push_str(&hex(&(0xffff_ffff_8100_0000 + i).to_le_bytes()));
        }
        g.push_str("46020000");
        g.push_str(&"00000000".repeat(6));
        g.push_str(&"00".repeat(8));
        g.push_str(&hex(&0xff11_0000_1234_0000u64.to_le_bytes()));
        let (regs, gs) = parse_regs(&g).unwrap();
        assert_eq!(gs, 0xff11_0000_1234_0000);
        assert_eq!(regs[reg::RIP], 0xffff_ffff_8100_0010);
        assert_eq!(regs[0], 0xffff_ffff_8100_0000);
        assert!(parse_regs("00").is_err());
        assert_eq!(unhex("0aff").unwrap(), [10, 255]);
        assert!(unhex("abc").is_err());
    }
}
