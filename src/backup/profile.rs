//! Where a pipeline's time goes (`backup run|restore --profile`).
//!
//! Each stage thread accumulates the wall time of what it does, split into work
//! (compress, encrypt, hash, …) and waits (for pg_dump, for the next stage, for the
//! upload), plus its own CPU time. An `Instant` pair per 256 KiB–8 MiB block and two
//! clock reads per thread: no measurable cost, so it is always collected and only
//! printed on request.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Seconds per named measurement, e.g. `compress.cpu`, `seal.waitUpload`.
pub type Profile = BTreeMap<String, f64>;

/// Wall time accumulated over many short calls.
#[derive(Clone, Copy, Debug, Default)]
pub struct Acc(pub Duration);

impl Acc {
    /// Runs `f`, adding its wall time.
    pub fn time<T>(&mut self, f: impl FnOnce() -> T) -> T {
        let t = Instant::now();
        let r = f();
        self.0 += t.elapsed();
        r
    }

    /// Adds the time since `since`.
    pub fn add_since(&mut self, since: Instant) {
        self.0 += since.elapsed();
    }

    /// Seconds.
    pub fn secs(self) -> f64 {
        self.0.as_secs_f64()
    }
}

/// CPU time of the calling thread.
pub fn thread_cpu() -> Duration {
    clock(libc::CLOCK_THREAD_CPUTIME_ID)
}

/// CPU time of this process (all threads) and of its waited-for children, user + system.
pub fn process_cpu() -> (Duration, Duration) {
    (usage(libc::RUSAGE_SELF), usage(libc::RUSAGE_CHILDREN))
}

fn clock(id: libc::clockid_t) -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; the call only writes it.
    if unsafe { libc::clock_gettime(id, &mut ts) } != 0 {
        return Duration::ZERO;
    }
    Duration::new(
        ts.tv_sec.max(0) as u64,
        ts.tv_nsec.clamp(0, 999_999_999) as u32,
    )
}

fn usage(who: libc::c_int) -> Duration {
    // SAFETY: an all-zero rusage is a valid value; getrusage only writes it.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `ru` is a valid, writable rusage.
    if unsafe { libc::getrusage(who, &mut ru) } != 0 {
        return Duration::ZERO;
    }
    let tv = |t: libc::timeval| {
        Duration::new(t.tv_sec.max(0) as u64, 0) + Duration::from_micros(t.tv_usec.max(0) as u64)
    };
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Puts `(name, seconds)` pairs into a profile, rounded to milliseconds.
pub fn record(profile: &mut Profile, entries: &[(&str, f64)]) {
    for (name, secs) in entries {
        profile.insert((*name).to_string(), (secs * 1000.0).round() / 1000.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clocks_advance_and_record_rounds() {
        let c0 = thread_cpu();
        let mut acc = Acc::default();
        let x = acc.time(|| (0..2_000_000u64).fold(0u64, |a, b| a.wrapping_add(b * b)));
        assert!(x > 0);
        assert!(acc.0 > Duration::ZERO);
        assert!(thread_cpu() > c0);
        assert!(process_cpu().0 > Duration::ZERO);
        let mut p = Profile::new();
        record(&mut p, &[("a.cpu", 1.23456), ("b.wait", 0.0004)]);
        assert_eq!(p["a.cpu"], 1.235);
        assert_eq!(p["b.wait"], 0.0);
    }
}
