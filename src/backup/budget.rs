//! Memory of a `backup run`, per compression level (pure): how many zstd workers run by
//! default, and the budget the BackupSchedule's Job gets as its default memory request
//! and limit.
//!
//! Measured peaks (issue #32, 2 CPUs, a 250 MB database, directory destination):
//!
//! | level | workers | peak RSS |
//! |---|---|---|
//! | 1 | 2 | 73 MiB |
//! | 1 | 0 | 57 MiB |
//! | 3 | 2 | 117 MiB |
//! | 3 | 0 | 54 MiB |
//! | 9 | 2 | 177 MiB |
//! | 9 | 0 | 66 MiB |
//! | 19 | 0 | 141 MiB |
//!
//! zstd dominates: each worker holds its own context (match tables that grow with the
//! level) and a job of input and output (four windows), so two workers at level 9 cost
//! more than the whole pipeline. An S3 destination adds the parts in flight:
//! `partSizeMiB × (concurrency + 2)`.

/// zstd workers when none are asked for: two when the process may use two CPUs or more
/// (`cpus` from `available_parallelism`, which follows a container's CPU quota) and the
/// level is 3 or lower, else none. Two workers at level ≤ 3 keep up with pg_dump
/// (one needs about 4 s of CPU per GB of incompressible text, the dump itself about
/// 4.5 s per GB), and on two cores they measured 3–8 % faster than compressing on the
/// pipeline's own thread (issue #18). Above level 3 the workers' contexts cost more
/// memory than they save time (level 9 with two workers peaked at 177 MiB, issue #32).
pub fn default_compression_threads(level: i32, cpus: usize) -> u32 {
    if cpus >= 2 && level <= 3 { 2 } else { 0 }
}

/// The memory (MiB) a run at `level` with `workers` zstd workers stays within, with a
/// directory destination: the measured peaks above with a margin (9 % at the tightest,
/// level 3 with two workers; measured with a debug build).
pub fn run_budget_mib(level: i32, workers: u32) -> u32 {
    let (base, per_worker) = match level {
        i32::MIN..=3 => (64, 32),
        4..=9 => (80, 56),
        _ => (176, 96),
    };
    base + per_worker * workers
}

/// [`run_budget_mib`] plus an S3 destination's parts in flight (`part_mib ×
/// (concurrency + 2)`); `None` for a directory.
pub fn job_budget_mib(level: i32, workers: u32, s3: Option<(u32, u32)>) -> u32 {
    let parts = s3.map_or(0, |(part_mib, concurrency)| {
        part_mib.saturating_mul(concurrency.saturating_add(2))
    });
    run_budget_mib(level, workers).saturating_add(parts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_zstd_workers_only_with_two_cpus_and_a_low_level() {
        assert_eq!(default_compression_threads(1, 2), 2);
        assert_eq!(default_compression_threads(3, 64), 2);
        assert_eq!(default_compression_threads(3, 1), 0);
        assert_eq!(default_compression_threads(4, 8), 0);
        assert_eq!(default_compression_threads(9, 2), 0);
        assert_eq!(default_compression_threads(19, 8), 0);
    }

    #[test]
    fn budgets_cover_every_measured_peak() {
        // (level, workers, measured MiB) from the table above.
        for (level, workers, peak) in [
            (1, 2, 73),
            (1, 0, 57),
            (3, 2, 117),
            (3, 0, 54),
            (9, 2, 177),
            (9, 0, 66),
            (19, 0, 141),
        ] {
            let budget = run_budget_mib(level, workers);
            assert!(
                budget >= peak,
                "level {level} × {workers}: {budget} < {peak}"
            );
        }
        // The defaults a Job runs with (2 CPUs), S3 with 8 MiB × 4 parts.
        assert_eq!(job_budget_mib(3, 2, Some((8, 4))), 128 + 48);
        assert_eq!(job_budget_mib(9, 0, None), 80);
        assert_eq!(job_budget_mib(19, 0, Some((64, 16))), 176 + 1152);
    }
}
