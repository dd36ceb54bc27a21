//! The one integration-test binary: fake backends on 127.77.x.y, the balancer run in-process,
//! and one module per area.

mod docker;
