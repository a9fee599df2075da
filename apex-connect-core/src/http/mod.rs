//! The HTTP stack: one client per connection with retry, auth, rate gate and host policy.

mod credentials;

pub use credentials::{Credentials, StaticToken};
