//! Multi-node and multi-process tests of mesh: clusters on loopback, processes of the `mesh-node`
//! binary, and fault injection. The tests live in `tests/tests/`; this library holds their shared
//! helpers as they appear.
