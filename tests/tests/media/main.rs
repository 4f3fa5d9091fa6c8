//! The media path through real nodes: RTP on loopback to real WebSocket agents, and its timing model.
//!
//! One test binary per kind of test (each file is a module) rather than one per file: linking
//! them is most of an incremental `make test` build.

mod media_bridge;
mod media_timing;
