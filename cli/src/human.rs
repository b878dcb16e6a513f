//! Numbers for people: bytes, rates and durations in SI units.

use std::time::Duration;

/// `1234567` → `1.23 MB` (SI, 10^3 steps).
pub fn bytes(n: u64) -> String {
    scaled(n as f64, "B")
}

/// `count` per second of `elapsed` (0 for no time at all).
pub fn per_second(count: u64, elapsed: Duration) -> f64 {
    let secs = elapsed.as_secs_f64();
    if secs > 0.0 {
        count as f64 / secs
    } else {
        0.0
    }
}

/// Packets and bytes over a duration: `1000 packets/s, 4.00 Mbit/s`.
pub fn rate(packets: u64, bytes: u64, elapsed: Duration) -> String {
    let pps = per_second(packets, elapsed);
    let bps = per_second(bytes, elapsed) * 8.0;
    format!("{pps:.0} packets/s, {}", scaled(bps, "bit/s"))
}

/// `2.003 s`, `150 ms`.
pub fn duration(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{} ms", d.as_millis())
    } else {
        format!("{:.2} s", d.as_secs_f64())
    }
}

fn scaled(value: f64, unit: &str) -> String {
    const PREFIXES: [&str; 5] = ["", "k", "M", "G", "T"];
    let mut v = value;
    let mut i = 0;
    while v >= 1000.0 && i + 1 < PREFIXES.len() {
        v /= 1000.0;
        i += 1;
    }
    if i == 0 {
        format!("{v:.0} {unit}")
    } else {
        format!("{v:.2} {}{unit}", PREFIXES[i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units() {
        assert_eq!(bytes(999), "999 B");
        assert_eq!(bytes(1_234_567), "1.23 MB");
        assert_eq!(
            rate(2000, 1_000_000, Duration::from_secs(2)),
            "1000 packets/s, 4.00 Mbit/s"
        );
        assert_eq!(duration(Duration::from_millis(150)), "150 ms");
    }
}
