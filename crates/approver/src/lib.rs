//! What an approver does with the local copy of the queue, as functions that return data: the
//! review of a synced request, signing it under the guards, approving and rejecting it on the
//! queue, the rows of the queue screen. The desktop app's commands and the CLI both call these;
//! neither decides anything itself.

pub mod actions;
pub mod presence;
pub mod problem;
pub mod rows;
pub mod setup;
pub mod vaults;
pub mod view;

pub use problem::{Kind, Problem};
