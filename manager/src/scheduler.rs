//! placeholder: see the interface in the helper brief
