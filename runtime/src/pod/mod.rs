//! A pod sandbox: its containers' programs, volumes, logs, limits and its in-process network
//! (the HTTP loopback its modules share).

pub mod lifecycle;
pub mod log;
pub mod network;
pub mod run;
pub mod volumes;
