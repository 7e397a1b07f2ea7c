//! placeholder
/// placeholder
pub struct RedbStore;
