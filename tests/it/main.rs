//! The one integration-test binary: fake backends on 127.77.N.x, the balancer run in-process,
//! and one module per area.

mod admin;
mod autoscale;
mod autoscale_docker;
mod clients;
mod dashboard;
mod discovery;
mod docker;
mod faults;
mod forwarding;
mod identity;
mod lifecycle;
mod logs;
mod metrics;
mod reload;
mod retry;
mod sessions;
mod smuggling;
mod stickiness;
mod support;
mod webapp;
