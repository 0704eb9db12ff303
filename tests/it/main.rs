//! Integration tests: one binary, one real control plane (etcd, kube-apiserver,
//! kube-controller-manager) started on first use, a fresh namespace per test.

// Signals to process groups (the `make run` test) need libc.
#![allow(unsafe_code)]

mod support;

mod admission;
mod argocd;
mod backends;
mod better_auth;
mod browser;
mod chart;
mod control_plane;
mod crds;
mod deploy;
mod drift;
mod examples;
mod finalizer_policy;
mod find;
mod hostile;
mod import;
mod invitations;
mod kubectl;
mod leader;
mod make_run;
mod monitoring;
mod observability;
mod offboarding;
mod pipeline;
mod plugin;
mod products;
mod reliability;
mod review;
mod roles;
mod secrets;
mod shards;
mod stores;
mod tenant_stores;
mod unreadable;
