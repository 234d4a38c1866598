//! Countersign's benchmarks live in `benches/`, each run on its own with `--bench NAME`:
//! `signing` and `rows` (`cargo bench -p countersign-bench --bench signing`), and `app`
//! (through `scripts/bench-app`, which builds the app first). This library is empty.
