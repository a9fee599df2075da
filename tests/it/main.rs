//! The facade's integration tests, one binary: the `apex-connect` binary as a child process
//! (the `memory` platform, and the platforms compiled in against their simulators), end-to-end
//! syncs through the facade, and no secret in any output.

#[cfg(all(feature = "server", feature = "memory", feature = "sqlite"))]
mod process;

#[cfg(all(feature = "server", feature = "memory", feature = "sqlite"))]
mod admin;

// Three nodes on one PostgreSQL database; it reuses `process`'s helpers, hence the same gates.
#[cfg(all(
    feature = "postgres",
    feature = "server",
    feature = "memory",
    feature = "sqlite"
))]
mod pg_scale;

#[cfg(all(
    feature = "server",
    feature = "memory",
    feature = "sqlite",
    any(feature = "frontapp", feature = "hubspot")
))]
mod connect_platforms;

#[cfg(all(
    feature = "server",
    feature = "frontapp",
    feature = "hubspot",
    feature = "sqlite"
))]
mod platform_webhooks;

#[cfg(all(feature = "frontapp", feature = "sqlite"))]
mod end_to_end;

#[cfg(all(feature = "frontapp", feature = "hubspot", feature = "sqlite"))]
mod secrets;

#[cfg(feature = "memory")]
mod platforms;
