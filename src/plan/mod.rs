//! The decisions, as pure functions: given a resource, what the store holds and the clock,
//! decide the store writes, whether to issue or revoke a token, and which status to show.
//! Nothing here touches the network; most tests live here.

pub mod bindings;
pub mod condition;
pub mod find;
pub mod groups;
pub mod offboarding;
pub mod records;
pub mod retry;
pub mod review;
pub mod system_user;
pub mod tenant;
pub mod world;
