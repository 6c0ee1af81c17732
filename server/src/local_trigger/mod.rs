//! `feeds-server local-trigger`: a local stand-in for Lambda's SQS event source mapping, which
//! neither `cargo lambda watch` nor `sam local` provides. It reads the mapping from template.yaml
//! (the SQS event's `BatchSize`, batching window and `ReportBatchItemFailures`, the function's
//! timeout, the queue's visibility timeout and redrive policy), sets the local queue up the same
//! way, then long-polls it and invokes the function through the Lambda Invoke API of a local
//! runner, deleting only what the function did not report failed.

mod event;
mod invoke;
mod mapping;
mod queues;
mod template;

use std::path::PathBuf;
use std::time::Duration;

use feeds::config::{self, LogSettings};
use feeds::queue::sqs::SqsConfig;
use feeds::settings::Env;
use feeds::BoxError;

/// `local-trigger`'s options; the queue is `FEEDS_QUEUE_URL` on `FEEDS_SQS_ENDPOINT`, as for the
/// functions.
#[derive(clap::Args)]
pub struct Args {
    /// The Lambda Invoke API: `cargo lambda watch` serves it on its port (9000), `sam local
    /// start-lambda` on 3001.
    #[arg(long, default_value = "http://127.0.0.1:9000")]
    endpoint: String,
    /// The name the runner serves the function under [default: its binary, as `cargo lambda
    /// watch` names it]; `sam local start-lambda` names it by its logical id (FanoutFunction).
    #[arg(long)]
    function: Option<String>,
    /// The SAM template.
    #[arg(long, default_value = "template.yaml")]
    template: PathBuf,
    /// A visibility timeout other than the template's, in seconds (tests, to see redeliveries
    /// quickly).
    #[arg(long)]
    visibility_timeout: Option<u32>,
    /// A function timeout other than the template's, in milliseconds (tests).
    #[arg(long)]
    function_timeout_ms: Option<u64>,
}

pub async fn run(args: Args) -> Result<(), BoxError> {
    let env = Env::process();
    config::init_tracing(&LogSettings::read(&env)?);
    let sqs = SqsConfig::read(&env)?;
    if sqs.endpoint.is_none() {
        return Err("FEEDS_SQS_ENDPOINT: required; on AWS, Lambda polls the queue itself".into());
    }
    let region = env.string_or("AWS_REGION", "us-east-1")?;
    let exit_on_stdin_eof = env.flag("FEEDS_EXIT_ON_STDIN_EOF")?.unwrap_or(false);
    let source = template::read(&args.template)?;
    let visibility_timeout = args
        .visibility_timeout
        .unwrap_or(source.queue.visibility_timeout);
    let client = feeds::queue::sqs::client(&sqs).await;
    let queue =
        queues::configure(&client, &sqs.queue_url, &source.queue, visibility_timeout).await?;
    let function = args
        .function
        .or_else(|| source.binary.clone())
        .unwrap_or_else(|| source.function_id.clone());
    let timeout = args
        .function_timeout_ms
        .map_or(source.timeout, Duration::from_millis);
    let invoker = invoke::Invoker::new(&args.endpoint, &function, timeout)?;
    tracing::info!(
        queue = %queue.url,
        dead_letter_queue = queue.dead_letter_url.as_deref().unwrap_or("none"),
        visibility_timeout_s = visibility_timeout,
        max_receive_count = source.queue.max_receive_count,
        batch_size = source.batch_size,
        batching_window_s = source.batching_window.as_secs(),
        report_batch_item_failures = source.report_batch_item_failures,
        function_timeout_ms = timeout.as_millis() as u64,
        invoke = invoker.url(),
        "polling"
    );
    let mapping = mapping::Mapping {
        sqs: client,
        queue_url: queue.url,
        queue_arn: queue.arn,
        region,
        batch_size: source.batch_size,
        batching_window: source.batching_window,
        report_batch_item_failures: source.report_batch_item_failures,
        invoker,
    };
    mapping.run(crate::shutdown_signal(exit_on_stdin_eof)).await;
    tracing::info!("stopped");
    Ok(())
}
