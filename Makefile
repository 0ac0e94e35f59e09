.PHONY: bench bench-backup

# Snapshot engine benchmark (docs/BACKUP.md). SIZE_GB=1 is the stated target size.
SIZE_GB ?= 1
bench: bench-backup
bench-backup:
	cargo build --release --bin palisade --example backup_s3_server
	python3 benches/backup_bench.py --size-gb $(SIZE_GB)
