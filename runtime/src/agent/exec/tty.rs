//! The terminal of `kubectl exec -it`: a Wasm guest has no pseudo-terminal, so the agent
//! plays the kernel's line discipline for it, as a pty in canonical mode would. Keys are
//! echoed, a line reaches the guest when Enter is pressed (with Backspace and Ctrl-U
//! editing it first), Ctrl-D on an empty line is the end of input, Ctrl-C interrupts; on the
//! way out, `\n` becomes `\r\n` (the terminal is in raw mode on kubectl's side). Escape
//! sequences (arrow keys) are dropped: there is no history to move in.

/// What one chunk of keystrokes produces.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Keys {
    /// Completed input for the guest's stdin.
    pub to_guest: Vec<u8>,
    /// What the terminal shows back.
    pub echo: Vec<u8>,
    pub end: Option<End>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// Ctrl-D on an empty line: stdin ends.
    Eof,
    /// Ctrl-C: the command is interrupted.
    Interrupt,
}

#[derive(Default)]
pub struct LineDiscipline {
    line: Vec<u8>,
    /// Inside an escape sequence: 1 after ESC, 2 inside `ESC [`.
    escape: u8,
}

impl LineDiscipline {
    pub fn input(&mut self, bytes: &[u8]) -> Keys {
        let mut keys = Keys::default();
        for &byte in bytes {
            if self.escape > 0 {
                self.escape = match (self.escape, byte) {
                    (1, b'[' | b'O') => 2,
                    (2, 0x40..=0x7e) | (1, _) => 0,
                    (state, _) => state,
                };
                continue;
            }
            match byte {
                b'\r' | b'\n' => {
                    self.line.push(b'\n');
                    keys.to_guest.append(&mut self.line);
                    keys.echo.extend_from_slice(b"\r\n");
                }
                0x7f | 0x08 if self.erase_char() => {
                    keys.echo.extend_from_slice(b"\x08 \x08");
                }
                // Nothing left to erase.
                0x7f | 0x08 => {}
                0x15 => {
                    while self.erase_char() {
                        keys.echo.extend_from_slice(b"\x08 \x08");
                    }
                }
                0x03 => {
                    self.line.clear();
                    keys.echo.extend_from_slice(b"^C\r\n");
                    keys.end = Some(End::Interrupt);
                    return keys;
                }
                0x04 => {
                    if self.line.is_empty() {
                        keys.end = Some(End::Eof);
                        return keys;
                    }
                    // Ctrl-D mid-line hands over the line so far, without a newline.
                    keys.to_guest.append(&mut self.line);
                }
                0x1b => self.escape = 1,
                b'\t' | 0x20.. => {
                    self.line.push(byte);
                    keys.echo.push(byte);
                }
                _ => {}
            }
        }
        keys
    }

    /// Removes the last character (all bytes of a UTF-8 one); whether there was one.
    fn erase_char(&mut self) -> bool {
        let Some(mut byte) = self.line.pop() else {
            return false;
        };
        while byte & 0xc0 == 0x80 {
            match self.line.pop() {
                Some(previous) => byte = previous,
                None => break,
            }
        }
        true
    }
}

/// Output for a terminal in raw mode: each `\n` as `\r\n`.
pub fn output(bytes: &[u8], into: &mut Vec<u8>) {
    for &byte in bytes {
        if byte == b'\n' {
            into.push(b'\r');
        }
        into.push(byte);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_reach_the_guest_at_enter_and_are_echoed() {
        let mut tty = LineDiscipline::default();
        let keys = tty.input(b"ls /da");
        assert_eq!(keys.to_guest, b"");
        assert_eq!(keys.echo, b"ls /da");
        let keys = tty.input(b"ta\r");
        assert_eq!(keys.to_guest, b"ls /data\n");
        assert_eq!(keys.echo, b"ta\r\n");
    }

    #[test]
    fn backspace_and_kill_edit_the_line() {
        let mut tty = LineDiscipline::default();
        let keys = tty.input("echo é\x7f\x7fx\r".as_bytes());
        assert_eq!(keys.to_guest, b"echox\n");
        assert_eq!(tty.input(b"\x7f").echo, b"", "nothing to erase");
        let keys = tty.input(b"junk\x15pwd\n");
        assert_eq!(keys.to_guest, b"pwd\n");
        assert!(keys.echo.starts_with(b"junk\x08 \x08"));
    }

    #[test]
    fn control_keys_end_input_or_interrupt() {
        let mut tty = LineDiscipline::default();
        assert_eq!(tty.input(b"\x04").end, Some(End::Eof));
        let keys = tty.input(b"half\x04");
        assert_eq!((keys.to_guest.as_slice(), keys.end), (&b"half"[..], None));
        let keys = tty.input(b"sleep 100\x03more");
        assert_eq!(keys.end, Some(End::Interrupt));
        assert_eq!(keys.to_guest, b"");
    }

    #[test]
    fn escape_sequences_are_dropped() {
        let mut tty = LineDiscipline::default();
        let keys = tty.input(b"a\x1b[Ab\x1bOBc\r");
        assert_eq!(keys.to_guest, b"abc\n");
    }

    #[test]
    fn output_gets_carriage_returns() {
        let mut out = Vec::new();
        output(b"a\nb\n", &mut out);
        assert_eq!(out, b"a\r\nb\r\n");
    }
}
