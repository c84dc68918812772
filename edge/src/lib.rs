//! The edge validator: a Cloudflare Worker (workers-rs, compiled to Wasm) that
//! verifies access tokens with [`shared`] and checks the session in the store
//! before forwarding. Built in its own issue; this crate holds its place in the
//! workspace so the layout of DESIGN.md §1 is in place from the start.
