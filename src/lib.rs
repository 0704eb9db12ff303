//! usher: a Kubernetes operator that keeps a multi-tenant product's customers (Tenant), their
//! locations (LocationGroup), their people (SystemUser) and those people's roles (RoleBinding) in
//! git, and reconciles them into the product's user store.
//!
//! Layers, each depending only on those above it (see DESIGN.md):
//! - [`crd`]: the API types, pure data; the CRDs in `crds/` are generated from them.
//! - [`plan`]: the decisions, pure functions over the types and the store's records.
//! - [`token`]: invitation tokens and their hashes.
//! - [`store`] and [`mail`]: the ports, one backend a file.
//! - [`controller`]: read, decide in [`plan`], write the store, mail, report.
//! - [`server`]: the acceptance page, the redemption API, health and metrics.
//! - [`validate`]: `usher validate`, the same decisions offline.
//! - [`run`]: `usher run` wires the above; [`cli`]: the command line, which calls it and the
//!   cluster-side commands ([`find`], [`review`], [`admin`]) and the offline ones ([`import`],
//!   [`validate`], [`version`]).

pub mod admin;
pub mod cli;
pub mod controller;
pub mod crd;
pub mod find;
pub mod import;
pub mod mail;
pub mod metrics;
pub mod plan;
pub mod review;
pub mod run;
pub mod server;
pub mod store;
pub mod token;
pub mod token_key;
pub mod validate;
pub mod version;
