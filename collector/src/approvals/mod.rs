//! The reference approval service: approvals as pure state (`book`) and its
//! HTTP API (`service`), served by `tracegate serve --approvals ADDR`.
//! Every approval request and decision is an event in the record store.

pub mod access;
pub mod auth;
pub mod book;
pub mod service;
