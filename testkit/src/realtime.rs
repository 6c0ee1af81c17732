//! What both ways of running the service push: the exact text of a realtime message, built from
//! the bytes the HTTP API answered for the activity, so that the standalone server's WebSocket
//! and API Gateway's connections are held to the same bytes.

/// `{"type":"activity","feed":<feed>,"activity":<activity>}`, with `activity` as the API
/// answered it (its raw JSON text).
pub fn activity_message(feed: &str, activity: &str) -> String {
    format!(r#"{{"type":"activity","feed":"{feed}","activity":{activity}}}"#)
}

/// `{"type":"removed","feed":<feed>,"id":<id>}`.
pub fn removed_message(feed: &str, id: &str) -> String {
    format!(r#"{{"type":"removed","feed":"{feed}","id":"{id}"}}"#)
}

/// `{"type":"counts","unseen":N,"unread":M}`.
pub fn counts_message(unseen: usize, unread: usize) -> String {
    format!(r#"{{"type":"counts","unseen":{unseen},"unread":{unread}}}"#)
}
