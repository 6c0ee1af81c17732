//! The crate's one error for the service's operations. It knows nothing of HTTP: the HTTP edge maps
//! each variant to a status and a JSON body in one place (`http::error`).

use crate::model::ValidationError;
use crate::queue::QueueError;
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request breaks a rule of the contract; nothing was changed.
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    /// The principal may not act for that user.
    #[error("{0}")]
    Forbidden(&'static str),
    /// No such thing.
    #[error("{0}")]
    NotFound(String),
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("fan-out queue: {0}")]
    Queue(#[from] QueueError),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
