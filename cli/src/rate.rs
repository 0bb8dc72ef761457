//! `--bwlimit`: an upper bound on upload speed, like rclone's.

use std::str::FromStr;
use std::time::{Duration, Instant};

/// Bytes per second.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate(pub u64);

impl FromStr for Rate {
    type Err = String;

    /// `500K`, `20M`, `1G` (binary units), or plain bytes per second.
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let (number, unit) = match s.char_indices().find(|(_, c)| c.is_ascii_alphabetic()) {
            Some((at, _)) => s.split_at(at),
            None => (s, ""),
        };
        let scale: u64 = match unit.to_ascii_uppercase().trim_end_matches("IB").trim_end_matches('B') {
            "" => 1,
            "K" => 1 << 10,
            "M" => 1 << 20,
            "G" => 1 << 30,
            _ => return Err(format!("{s:?}: the unit must be K, M or G")),
        };
        let number: f64 = number.trim().parse().map_err(|_| format!("{s:?} is not a rate like 20M"))?;
        if !number.is_finite() || number <= 0.0 {
            return Err(format!("{s:?}: the rate must be above zero"));
        }
        let bytes = (number * scale as f64).round() as u64;
        Ok(Rate(bytes.max(1)))
    }
}

/// Paces a transfer to a rate: how long to wait after each piece.
pub struct Pace {
    rate: Rate,
    started: Instant,
    sent: u64,
}

impl Pace {
    pub fn new(rate: Rate) -> Self {
        Pace { rate, started: Instant::now(), sent: 0 }
    }

    pub fn after(&mut self, bytes: u64) -> Duration {
        self.sent += bytes;
        let due = Duration::from_secs_f64(self.sent as f64 / self.rate.0 as f64);
        due.saturating_sub(self.started.elapsed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse_with_binary_units() {
        assert_eq!("20M".parse(), Ok(Rate(20 << 20)));
        assert_eq!("1.5k".parse(), Ok(Rate(1536)));
        assert_eq!("1GiB".parse(), Ok(Rate(1 << 30)));
        assert_eq!("4096".parse(), Ok(Rate(4096)));
        assert!("0".parse::<Rate>().is_err());
        assert!("fast".parse::<Rate>().is_err());
        assert!("3T".parse::<Rate>().is_err());
    }

    #[test]
    fn the_pace_waits_for_what_was_sent_early() {
        let mut pace = Pace::new(Rate(1000));
        assert!(pace.after(500) > Duration::from_millis(400));
    }
}
