//! The commands, each built from the layers below: [`cli`] (the command line),
//! [`convert`], [`inspect`], [`verify`] and [`stats`].

pub mod cli;
pub mod convert;
pub mod inspect;
pub mod stats;
pub mod verify;
