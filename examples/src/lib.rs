//! Runnable examples of mesh (greeter, streaming, functions, pub/sub), each a binary of this crate
//! that works across processes. They arrive with the node (issue 4).
