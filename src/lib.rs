pub mod admission;
pub mod cli;
pub mod defaults;
pub mod patch;
pub mod pod;
pub mod policy;
pub mod preview;
