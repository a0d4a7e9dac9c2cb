//! The few port-I/O devices a firmware needs to talk, stop and reboot.
//!
//! | port | device | effect |
//! |---|---|---|
//! | 0xE9 | debug console (Bochs/QEMU `debugcon`) | OUT byte → output |
//! | 0x3F8–0x3FF | COM1, a minimal 16550 | THR write → output; LSR reads "transmitter empty" |
//! | exit port (0xF4) | QEMU `isa-debug-exit`-style | OUT value → run ends with that code |
//! | 0xCF9 | reset control register | 0x06 (SYS_RST\|RST_CPU): hard reset → RESET; 0x04 (RST_CPU): soft reset → INIT |
//! | 0x92 | system control port A | bit 0 0→1 (fast reset) → INIT |
//! | 0x64 | keyboard controller | command 0xFE (pulse reset line) → INIT |
//!
//! Which event each reboot raises, and why: on Intel PC chipsets (ICH/PCH datasheets, "Reset
//! Control Register" and "INIT# assertion" sections) the RST_CPU bit of 0xCF9 with SYS_RST clear
//! asserts INIT# only, and with SYS_RST set asserts PLTRST# and the processor's RESET#; the fast
//! reset of port 0x92 and the keyboard controller's RCIN# line (command 0xFE) are two more
//! sources of INIT#. A triple fault (shutdown) is taken as a hard RESET, as QEMU does: that is
//! what a guest that triple-faults to reboot expects, and INIT would keep its MSRs and x87 state.
//! Port 0x92 bit 0 survives a soft reset and is cleared by a hard one, so firmware can tell the
//! two apart (as kvm-unit-tests' `x86/init.c` does).

use std::io::Write;
use std::sync::{Arc, Mutex};

/// Debug-console port.
pub const DEBUGCON_PORT: u16 = 0xe9;
/// COM1 base port.
pub const COM1_PORT: u16 = 0x3f8;
/// Default guest-requested exit port (QEMU's `isa-debug-exit` default).
pub const EXIT_PORT: u16 = 0xf4;
/// Reset control register.
pub const CF9_PORT: u16 = 0xcf9;
/// System control port A.
pub const PORT_A: u16 = 0x92;
/// Keyboard controller command/status port.
pub const KBC_PORT: u16 = 0x64;

/// The device at `port`, if any (the exit port must not be one of them).
pub fn device_at(port: u16) -> Option<&'static str> {
    match port {
        DEBUGCON_PORT => Some("debug console"),
        p if (COM1_PORT..COM1_PORT + 8).contains(&p) => Some("COM1 serial port"),
        CF9_PORT => Some("reset control register"),
        PORT_A => Some("system control port A"),
        KBC_PORT => Some("keyboard controller"),
        _ => None,
    }
}

/// RESET or INIT of every vCPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RebootKind {
    /// Hard reset: RESET# to every processor, platform devices reset.
    Reset,
    /// Soft reset: INIT# to every processor, devices untouched.
    Init,
}

/// What asked for a reboot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RebootReason {
    /// A vCPU triple-faulted (KVM_EXIT_SHUTDOWN).
    TripleFault,
    /// 0x06 to port 0xCF9.
    Cf9Hard,
    /// 0x04 to port 0xCF9.
    Cf9Soft,
    /// Port 0x92 bit 0 set.
    Port92,
    /// Keyboard-controller command 0xFE.
    Kbc,
    /// The hypervisor reported a reset system event.
    SystemEvent,
}

impl RebootReason {
    /// The event this reason raises (see the module documentation for why).
    pub fn kind(self) -> RebootKind {
        match self {
            RebootReason::TripleFault | RebootReason::Cf9Hard | RebootReason::SystemEvent => {
                RebootKind::Reset
            }
            RebootReason::Cf9Soft | RebootReason::Port92 | RebootReason::Kbc => RebootKind::Init,
        }
    }

    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            RebootReason::TripleFault => "triple-fault",
            RebootReason::Cf9Hard => "cf9-hard",
            RebootReason::Cf9Soft => "cf9-soft",
            RebootReason::Port92 => "port92",
            RebootReason::Kbc => "kbc",
            RebootReason::SystemEvent => "system-event",
        }
    }
}

/// What the runner must do after a port access.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PortAction {
    /// Nothing: continue.
    Continue,
    /// Reboot the VM.
    Reboot(RebootReason),
    /// The guest asked to end the run with this value.
    Exit(u32),
    /// Writing guest output failed; [`Platform::take_output_error`] says how.
    OutputFailed,
}

/// A buffer sink shared with the caller (tests, `check`).
pub type SharedBuffer = Arc<Mutex<Vec<u8>>>;

/// Where guest output goes.
#[derive(Clone)]
pub enum Sink {
    /// The process's standard output.
    Stdout,
    /// A shared buffer (tests, `check`).
    Buffer(SharedBuffer),
    /// A file.
    File(Arc<Mutex<std::fs::File>>),
    /// Nowhere.
    Discard,
}

impl Sink {
    /// Write guest output. A closed standard output (`| head`) is not an error; any other
    /// failure (a full disk, an I/O error) is returned so the run can end with it instead of
    /// losing output silently.
    fn write(&self, bytes: &[u8]) -> std::io::Result<()> {
        match self {
            Sink::Stdout => {
                let mut out = std::io::stdout().lock();
                match out.write_all(bytes).and_then(|()| out.flush()) {
                    Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
                    r => r,
                }
            }
            Sink::Buffer(b) => {
                if let Ok(mut b) = b.lock() {
                    b.extend_from_slice(bytes);
                }
                Ok(())
            }
            Sink::File(f) => match f.lock() {
                Ok(mut f) => f.write_all(bytes),
                Err(_) => Ok(()),
            },
            Sink::Discard => Ok(()),
        }
    }
}

/// The platform's port-I/O devices.
pub struct Platform {
    sink: Sink,
    serial: Sink,
    output_error: Option<String>,
    exit_port: u16,
    cf9: u8,
    port_a: u8,
    com1_lcr: u8,
    com1_scratch: u8,
    com1_ier: u8,
}

impl Platform {
    /// Devices writing port 0xE9 and COM1 output to `sink`, with the guest-requested exit at
    /// `exit_port`.
    pub fn new(sink: Sink, exit_port: u16) -> Self {
        Self::with_serial(sink.clone(), sink, exit_port)
    }

    /// Devices writing port 0xE9 output to `debugcon` and COM1 output to `serial`.
    pub fn with_serial(debugcon: Sink, serial: Sink, exit_port: u16) -> Self {
        Platform {
            sink: debugcon,
            serial,
            output_error: None,
            exit_port,
            cf9: 0,
            port_a: 0,
            com1_lcr: 0,
            com1_scratch: 0,
            com1_ier: 0,
        }
    }

    /// From now on, port 0xE9 output goes to `debugcon` and COM1 output to `serial`.
    pub fn set_output(&mut self, debugcon: Sink, serial: Sink) {
        self.sink = debugcon;
        self.serial = serial;
    }

    /// The guest wrote `data` to `port`.
    pub fn io_out(&mut self, port: u16, data: &[u8]) -> PortAction {
        let byte = data.first().copied().unwrap_or(0);
        match port {
            DEBUGCON_PORT => {
                if let Err(e) = self.sink.write(&data[..1.min(data.len())]) {
                    return self.output_failed("debug console (port 0xE9)", &e);
                }
            }
            p if p == self.exit_port => {
                let mut v = [0u8; 4];
                let n = data.len().min(4);
                v[..n].copy_from_slice(&data[..n]);
                return PortAction::Exit(u32::from_le_bytes(v));
            }
            p if (COM1_PORT..COM1_PORT + 8).contains(&p) => {
                if let Err(e) = self.com1_out(p - COM1_PORT, byte) {
                    return self.output_failed("serial port (COM1)", &e);
                }
            }
            CF9_PORT => {
                // Bits 1 (SYS_RST) and 2 (RST_CPU) are read/write; a write with RST_CPU set
                // starts the reset.
                self.cf9 = byte & 0x0e;
                if byte & 0x04 != 0 {
                    self.cf9 &= !0x04;
                    return PortAction::Reboot(if byte & 0x02 != 0 {
                        RebootReason::Cf9Hard
                    } else {
                        RebootReason::Cf9Soft
                    });
                }
            }
            PORT_A => {
                let rising = byte & 1 != 0 && self.port_a & 1 == 0;
                self.port_a = byte;
                if rising {
                    return PortAction::Reboot(RebootReason::Port92);
                }
            }
            KBC_PORT if byte == 0xfe => return PortAction::Reboot(RebootReason::Kbc),
            _ => {}
        }
        PortAction::Continue
    }

    fn output_failed(&mut self, channel: &str, e: &std::io::Error) -> PortAction {
        if self.output_error.is_none() {
            self.output_error = Some(format!(
                "writing the guest's {channel} output failed: {e} — free space or choose another file"
            ));
        }
        PortAction::OutputFailed
    }

    /// Why the last [`PortAction::OutputFailed`] happened (taken: the next call returns `None`).
    pub fn take_output_error(&mut self) -> Option<String> {
        self.output_error.take()
    }

    fn com1_out(&mut self, reg: u16, byte: u8) -> std::io::Result<()> {
        let dlab = self.com1_lcr & 0x80 != 0;
        match reg {
            0 if !dlab => return self.serial.write(&[byte]),
            1 if !dlab => self.com1_ier = byte & 0x0f,
            3 => self.com1_lcr = byte,
            7 => self.com1_scratch = byte,
            _ => {}
        }
        Ok(())
    }

    /// The guest read `size` bytes from `port`.
    pub fn io_in(&mut self, port: u16, size: u8) -> [u8; 4] {
        let v: u8 = match port {
            p if (COM1_PORT..COM1_PORT + 8).contains(&p) => match p - COM1_PORT {
                1 if self.com1_lcr & 0x80 == 0 => self.com1_ier,
                2 => 0x01, // IIR: no interrupt pending
                3 => self.com1_lcr,
                5 => 0x60, // LSR: transmitter holding register and shifter empty
                7 => self.com1_scratch,
                _ => 0,
            },
            CF9_PORT => self.cf9,
            PORT_A => self.port_a,
            KBC_PORT => 0x00,      // input and output buffers empty
            DEBUGCON_PORT => 0xe9, // Bochs/QEMU debugcon "present" signature
            _ => 0xff,
        };
        let mut out = [0xff; 4];
        out[0] = v;
        if size > 1 && v != 0xff {
            out[1..].fill(0);
        }
        out
    }

    /// A reboot of `kind` happened: hard resets clear port 0x92 and the COM1 state; soft
    /// resets leave them (firmware tells the two apart by port 0x92 bit 0).
    pub fn on_reboot(&mut self, kind: RebootKind) {
        self.cf9 = 0;
        if kind == RebootKind::Reset {
            self.port_a = 0;
            self.com1_lcr = 0;
            self.com1_ier = 0;
            self.com1_scratch = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn platform() -> (Platform, Arc<Mutex<Vec<u8>>>) {
        let buf = Arc::new(Mutex::new(Vec::new()));
        (Platform::new(Sink::Buffer(buf.clone()), EXIT_PORT), buf)
    }

    #[test]
    fn debugcon_and_com1_reach_the_sink() {
        let (mut p, buf) = platform();
        p.io_out(DEBUGCON_PORT, b"h");
        p.io_out(COM1_PORT, b"i");
        p.io_out(COM1_PORT + 3, &[0x80]); // DLAB: the next write is a divisor, not output
        p.io_out(COM1_PORT, &[0x01]);
        p.io_out(COM1_PORT + 3, &[0x03]);
        p.io_out(COM1_PORT, b"!");
        assert_eq!(&*buf.lock().unwrap(), b"hi!");
        assert_eq!(p.io_in(COM1_PORT + 5, 1)[0], 0x60);
    }

    #[test]
    fn debugcon_and_com1_can_go_apart() {
        let (e9, com1) = (SharedBuffer::default(), SharedBuffer::default());
        let mut p = Platform::with_serial(
            Sink::Buffer(e9.clone()),
            Sink::Buffer(com1.clone()),
            EXIT_PORT,
        );
        p.io_out(DEBUGCON_PORT, b"a");
        p.io_out(COM1_PORT, b"b");
        assert_eq!(&*e9.lock().unwrap(), b"a");
        assert_eq!(&*com1.lock().unwrap(), b"b");
    }

    #[test]
    fn a_full_disk_is_an_error() {
        let Ok(full) = std::fs::OpenOptions::new().write(true).open("/dev/full") else {
            return;
        };
        let mut p = Platform::new(Sink::File(Arc::new(Mutex::new(full))), EXIT_PORT);
        assert_eq!(p.io_out(DEBUGCON_PORT, b"x"), PortAction::OutputFailed);
        let e = p.take_output_error().unwrap();
        assert!(
            e.contains("port 0xE9") && e.contains("No space left"),
            "{e}"
        );
    }

    #[test]
    fn cf9_hard_is_reset_and_soft_is_init() {
        let (mut p, _) = platform();
        assert_eq!(p.io_out(CF9_PORT, &[0x02]), PortAction::Continue);
        assert_eq!(
            p.io_out(CF9_PORT, &[0x06]),
            PortAction::Reboot(RebootReason::Cf9Hard)
        );
        assert_eq!(
            p.io_out(CF9_PORT, &[0x04]),
            PortAction::Reboot(RebootReason::Cf9Soft)
        );
        assert_eq!(RebootReason::Cf9Hard.kind(), RebootKind::Reset);
        assert_eq!(RebootReason::Cf9Soft.kind(), RebootKind::Init);
    }

    #[test]
    fn port92_bit0_rising_edge_is_init_and_survives_only_soft_resets() {
        let (mut p, _) = platform();
        assert_eq!(
            p.io_out(PORT_A, &[0x01]),
            PortAction::Reboot(RebootReason::Port92)
        );
        assert_eq!(p.io_out(PORT_A, &[0x03]), PortAction::Continue, "no edge");
        p.on_reboot(RebootKind::Init);
        assert_eq!(p.io_in(PORT_A, 1)[0], 0x03);
        p.on_reboot(RebootKind::Reset);
        assert_eq!(p.io_in(PORT_A, 1)[0], 0x00);
    }

    #[test]
    fn kbc_fe_is_init_and_exit_port_ends_the_run() {
        let (mut p, _) = platform();
        assert_eq!(
            p.io_out(KBC_PORT, &[0xfe]),
            PortAction::Reboot(RebootReason::Kbc)
        );
        assert_eq!(RebootReason::Kbc.kind(), RebootKind::Init);
        assert_eq!(
            p.io_out(EXIT_PORT, &[0x31, 0, 0, 0]),
            PortAction::Exit(0x31)
        );
        assert_eq!(RebootReason::TripleFault.kind(), RebootKind::Reset);
    }
}
