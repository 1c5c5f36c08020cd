//! Seeded, deterministic simulations of mesh clusters: the real membership core on a virtual clock
//! and network (latency, loss, partitions, crashes, restarts), scenarios in TOML files, and the
//! figures that come out (convergence, detection time, false positives, bytes per node). Arrives
//! with issue 7.
