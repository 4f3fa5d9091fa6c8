//! The agent bridge: the Twilio Media Streams protocol spoken to voice-AI agents over WebSocket.

pub mod caller_queue;
pub mod session;
pub mod twilio;
