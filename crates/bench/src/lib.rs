//! Countersign's benchmarks live in `benches/`: `signing` (`cargo bench -p countersign-bench
//! --bench signing`) and `app` (`scripts/bench-app`). This library is empty.
