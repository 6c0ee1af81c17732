//! From driver errors to store errors: `Unavailable` when trying again later may succeed.

use scylla::errors::{
    ConnectionError, ConnectionPoolError, ConnectionSetupRequestErrorKind, DbError, ExecutionError,
    IntoRowsResultError, MaybeFirstRowError, MetadataError, NewSessionError, PrepareError,
    RequestAttemptError, RowsError, SchemaAgreementError, SingleRowError,
};

use crate::store::StoreError;

/// A configuration that cannot be used, found when it is used (not when it is read).
pub(super) fn config_error(message: String) -> StoreError {
    StoreError::Internal(format!("Cassandra configuration: {message}"))
}

/// Driver errors, told apart by whether trying again later may succeed.
pub(super) trait DriverError: std::fmt::Display {
    /// The cluster could not be reached, timed out or was overloaded.
    fn is_transient(&self) -> bool {
        false
    }
}

/// The one mapping from driver errors to store errors: transient ones are `Unavailable` (`503`),
/// the rest `Internal` (`500`). `op` names what was being done.
pub(super) fn store_error(op: &str, err: impl DriverError) -> StoreError {
    let message = format!("Cassandra {op}: {err}");
    if err.is_transient() {
        StoreError::Unavailable(message)
    } else {
        StoreError::Internal(message)
    }
}

/// The connection, not the cluster, failed: a fresh session may well succeed.
pub(super) fn connection_lost(err: &ExecutionError) -> bool {
    matches!(
        err,
        ExecutionError::ConnectionPoolError(_)
            | ExecutionError::RequestTimeout(_)
            | ExecutionError::LastAttemptError(
                RequestAttemptError::BrokenConnectionError(_)
                    | RequestAttemptError::UnableToAllocStreamId
            )
    )
}

fn db_error_is_transient(err: &DbError) -> bool {
    matches!(
        err,
        DbError::Unavailable { .. }
            | DbError::Overloaded
            | DbError::IsBootstrapping
            | DbError::ReadTimeout { .. }
            | DbError::WriteTimeout { .. }
            | DbError::RateLimitReached { .. }
    )
}

fn attempt_is_transient(err: &RequestAttemptError) -> bool {
    match err {
        RequestAttemptError::UnableToAllocStreamId
        | RequestAttemptError::BrokenConnectionError(_) => true,
        RequestAttemptError::DbError(db, _) => db_error_is_transient(db),
        _ => false,
    }
}

impl DriverError for ConnectionPoolError {
    fn is_transient(&self) -> bool {
        match self {
            // Wrong credentials will not get better by waiting.
            ConnectionPoolError::Broken {
                last_connection_error: ConnectionError::ConnectionSetupRequestError(e),
            } => !matches!(
                e.get_error(),
                ConnectionSetupRequestErrorKind::DbError(
                    DbError::AuthenticationError | DbError::Unauthorized,
                    _
                ) | ConnectionSetupRequestErrorKind::MissingAuthentication
            ),
            _ => true,
        }
    }
}

impl DriverError for MetadataError {
    fn is_transient(&self) -> bool {
        match self {
            MetadataError::ConnectionPoolError(e) => e.is_transient(),
            MetadataError::FetchError(_) => true,
            _ => false,
        }
    }
}

impl DriverError for ExecutionError {
    fn is_transient(&self) -> bool {
        match self {
            ExecutionError::EmptyPlan | ExecutionError::RequestTimeout(_) => true,
            ExecutionError::ConnectionPoolError(e) => e.is_transient(),
            ExecutionError::LastAttemptError(e) => attempt_is_transient(e),
            ExecutionError::PrepareError(e) => e.is_transient(),
            ExecutionError::SchemaAgreementError(e) => e.is_transient(),
            ExecutionError::MetadataError(e) => e.is_transient(),
            _ => false,
        }
    }
}

impl DriverError for PrepareError {
    fn is_transient(&self) -> bool {
        match self {
            PrepareError::ConnectionPoolError(e) => e.is_transient(),
            PrepareError::AllAttemptsFailed { first_attempt } => {
                attempt_is_transient(first_attempt)
            }
            _ => false,
        }
    }
}

impl DriverError for SchemaAgreementError {
    fn is_transient(&self) -> bool {
        match self {
            SchemaAgreementError::ConnectionPoolError(e) => e.is_transient(),
            SchemaAgreementError::PrepareError(e) => e.is_transient(),
            SchemaAgreementError::RequestError(e) => attempt_is_transient(e),
            SchemaAgreementError::Timeout(_) | SchemaAgreementError::RequiredHostAbsent(_) => true,
            _ => false,
        }
    }
}

impl DriverError for NewSessionError {
    fn is_transient(&self) -> bool {
        match self {
            NewSessionError::FailedToResolveAnyHostname(_) => true,
            NewSessionError::MetadataError(e) => e.is_transient(),
            _ => false,
        }
    }
}

// Results that do not have the expected shape: never transient.
impl DriverError for IntoRowsResultError {}
impl DriverError for RowsError {}
impl DriverError for SingleRowError {}
impl DriverError for MaybeFirstRowError {}
impl DriverError for scylla::errors::DeserializationError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overload_and_lost_connections_are_transient_and_bad_requests_are_not() {
        let db = |e: DbError| {
            ExecutionError::LastAttemptError(RequestAttemptError::DbError(e, "m".to_owned()))
        };
        let unavailable = |e| matches!(store_error("op", e), StoreError::Unavailable(_));
        assert!(unavailable(db(DbError::Overloaded)));
        assert!(unavailable(ExecutionError::EmptyPlan));
        assert!(!unavailable(db(DbError::SyntaxError)));
        let message = store_error("op", db(DbError::Overloaded)).to_string();
        assert!(message.starts_with("Cassandra op: "), "{message}");

        let stream = ExecutionError::LastAttemptError(RequestAttemptError::UnableToAllocStreamId);
        assert!(connection_lost(&stream));
        assert!(!connection_lost(&db(DbError::Overloaded)));
    }
}
