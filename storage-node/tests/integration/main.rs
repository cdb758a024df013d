//! Integration tests of the storage node: hostile plugins are contained with a typed
//! error naming the plugin and the reason, and the node keeps serving normal tasks.

mod audit;
mod cache;
mod fold;
mod footer;
mod hostile;
mod result_cache;
