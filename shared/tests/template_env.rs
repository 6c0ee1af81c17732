//! template.yaml declares every variable the Lambda functions read, because `sam local` passes a
//! function only the variables its template declares: an `--env-vars` entry for any other is
//! dropped without a word. The names read are recorded while the settings are read the way a
//! function reads them at start-up, under each configuration a deployment or `sam local` uses.
//! The local template and env.json of scripts/sam-local.sh follow template.yaml.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use feeds::auth::DEV_PUBLIC_KEY_PEM;
use feeds::config::{Defaults, LogSettings, Settings};
use feeds::settings::Env;
use yaml_rust2::{Yaml, YamlLoader};

/// Set by Lambda itself (reserved: a template cannot declare them); the log format and level from
/// each function's `LoggingConfig`.
const SET_BY_LAMBDA: [&str; 4] = [
    "AWS_LAMBDA_FUNCTION_NAME",
    "AWS_REGION",
    "AWS_LAMBDA_LOG_FORMAT",
    "AWS_LAMBDA_LOG_LEVEL",
];

/// Read by the shared settings for the standalone server and its admin commands (the dead-letter
/// queue of `admin redrive-dlq`): no Lambda function uses them.
const SERVER_ONLY: [&str; 4] = [
    "FEEDS_BIND",
    "FEEDS_EXIT_ON_STDIN_EOF",
    "FEEDS_SQLITE_PATH",
    "FEEDS_DLQ_URL",
];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn load(path: &Path) -> Yaml {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    YamlLoader::load_from_str(&text).unwrap().remove(0)
}

fn template() -> Yaml {
    load(&root().join("template.yaml"))
}

fn keys(map: &Yaml) -> BTreeSet<String> {
    map.as_hash()
        .map(|h| {
            h.keys()
                .filter_map(|k| k.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Each function's declared variables: the Globals' and its own.
fn declared(template: &Yaml) -> BTreeMap<String, BTreeSet<String>> {
    let globals = keys(&template["Globals"]["Function"]["Environment"]["Variables"]);
    assert!(
        globals.contains("FEEDS_STORE"),
        "template.yaml's Globals declare the functions' variables: {globals:?}"
    );
    let resources = template["Resources"].as_hash().expect("Resources");
    let functions: BTreeMap<String, BTreeSet<String>> = resources
        .iter()
        .filter(|(_, r)| r["Type"].as_str() == Some("AWS::Serverless::Function"))
        .map(|(name, r)| {
            let own = keys(&r["Properties"]["Environment"]["Variables"]);
            (
                name.as_str().unwrap().to_owned(),
                globals.union(&own).cloned().collect(),
            )
        })
        .collect();
    assert!(functions.len() >= 4, "{functions:?}");
    functions
}

/// The names the settings read at a function's start-up with `vars` set.
fn names_read(vars: &[(&str, &str)]) -> BTreeSet<String> {
    let env = Env::from_pairs(vars.iter().copied()).recording();
    LogSettings::read(&env).unwrap();
    if let Err(e) = Settings::read(&env, Defaults::AWS) {
        panic!("{vars:?}: {e}");
    }
    env.names_read()
}

#[test]
fn the_template_declares_every_variable_the_functions_read() {
    let lambda = [
        ("AWS_LAMBDA_FUNCTION_NAME", "feeds-GetFeedFunction"),
        ("AWS_REGION", "us-east-1"),
        ("FEEDS_STORE", "cassandra"),
        ("FEEDS_QUEUE", "sqs"),
        ("FEEDS_JWT_PUBLIC_KEY", DEV_PUBLIC_KEY_PEM),
    ];
    let deployed = [
        (
            "FEEDS_QUEUE_URL",
            "https://sqs.us-east-1.amazonaws.com/123456789012/fanout",
        ),
        (
            "FEEDS_CASSANDRA_NODES",
            "cassandra.us-east-1.amazonaws.com:9142",
        ),
        ("FEEDS_CASSANDRA_AUTH", "sigv4"),
    ];
    let with_credentials = [
        (
            "FEEDS_QUEUE_URL",
            "https://sqs.us-east-1.amazonaws.com/123456789012/fanout",
        ),
        (
            "FEEDS_CASSANDRA_NODES",
            "cassandra.us-east-1.amazonaws.com:9142",
        ),
        ("FEEDS_CASSANDRA_AUTH", "password"),
        ("FEEDS_CASSANDRA_USERNAME", "feeds-at-123"),
        ("FEEDS_CASSANDRA_PASSWORD", "secret"),
    ];
    // What scripts/sam-local.sh gives `sam local`.
    let local = [
        (
            "FEEDS_QUEUE_URL",
            "http://172.17.0.1:9324/000000000000/fanout",
        ),
        ("FEEDS_SQS_ENDPOINT", "http://172.17.0.1:9324"),
        ("FEEDS_CASSANDRA_NODES", "172.17.0.1:9042"),
        ("FEEDS_CASSANDRA_AUTH", "none"),
        ("FEEDS_CASSANDRA_TLS", "false"),
    ];
    let mut read = BTreeSet::new();
    for config in [&deployed[..], &with_credentials[..], &local[..]] {
        read.extend(names_read(&[&lambda[..], config].concat()));
    }
    // The recording saw the settings of every part: the store, its TLS and sign-in, the queue,
    // the fan-out, the rate limits, the tokens, logging.
    for name in [
        "FEEDS_CASSANDRA_TLS_SERVER_NAME",
        "FEEDS_CASSANDRA_SIGV4_REGION",
        "FEEDS_SQS_ENDPOINT",
        "FEEDS_FANOUT_CHUNK_SIZE",
        "FEEDS_RATE_LEASE",
        "FEEDS_JWKS_FILE",
        "FEEDS_LOG_FORMAT",
    ] {
        assert!(read.contains(name), "{name} was not read: {read:?}");
    }

    for (function, declared) in declared(&template()) {
        let missing: Vec<&String> = read
            .iter()
            .filter(|name| !declared.contains(*name))
            .filter(|name| !SET_BY_LAMBDA.contains(&name.as_str()))
            .filter(|name| !SERVER_ONLY.contains(&name.as_str()))
            .collect();
        assert!(
            missing.is_empty(),
            "{function} reads {missing:?}, which template.yaml does not declare: declare each in \
             Globals (\"\" when unused), or `sam local --env-vars` cannot set it"
        );
    }
}

/// The value at `path` (map keys) in `doc`, to change.
fn at<'a>(doc: &'a mut Yaml, path: &[&str]) -> &'a mut Yaml {
    path.iter().fold(doc, |node, key| match node {
        Yaml::Hash(map) => map
            .get_mut(&Yaml::String((*key).to_owned()))
            .unwrap_or_else(|| panic!("no {key} in the template")),
        _ => panic!("{key}: not a map"),
    })
}

#[test]
fn the_sam_local_files_follow_the_template() {
    let dir = std::env::temp_dir().join(format!("sam-local-render-{}", std::process::id()));
    let status = Command::new("bash")
        .arg(root().join("scripts/sam-local.sh"))
        .args(["render".as_ref(), dir.as_os_str()])
        .env("FEEDS_SAM_LOCAL_ADDRESS", "192.0.2.10")
        .status()
        .unwrap();
    assert!(status.success(), "scripts/sam-local.sh render: {status}");

    // template.yaml but for the machine's architecture and each function's code directory.
    let mut expected = template();
    let arch = match std::env::consts::ARCH {
        "aarch64" => "arm64",
        other => other,
    };
    *at(&mut expected, &["Globals", "Function", "Architectures"]) =
        Yaml::Array(vec![Yaml::String(arch.to_owned())]);
    let functions: Vec<String> = declared(&expected).into_keys().collect();
    for function in &functions {
        let code = at(
            &mut expected,
            &["Resources", function, "Properties", "CodeUri"],
        );
        let crate_dir = code.as_str().unwrap().strip_prefix("functions/").unwrap();
        let local = dir.join("code").join(crate_dir);
        *code = Yaml::String(local.to_str().unwrap().to_owned());
    }
    assert!(
        load(&dir.join("template.yaml")) == expected,
        "the local template is not template.yaml with only the architecture and the CodeUris changed"
    );

    // Every variable of env.json is declared (sam local would drop it silently), for each function.
    let env: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("env.json")).unwrap()).unwrap();
    let vars = env["Parameters"]
        .as_object()
        .expect("env.json's Parameters");
    assert_eq!(vars["FEEDS_CASSANDRA_NODES"], "192.0.2.10:9042");
    for (function, declared) in declared(&expected) {
        for name in vars.keys() {
            assert!(
                declared.contains(name),
                "env.json sets {name}, which {function} does not declare in template.yaml"
            );
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The alarm on failed invocations counts every function: for each, a metric of its `Errors` and
/// one of its `Invocations`, both summed in the alarm's expression.
#[test]
fn the_error_rate_alarm_counts_every_function() {
    let template = template();
    let alarm = &template["Resources"]["FunctionErrorRateAlarm"]["Properties"]["Metrics"];
    let metrics = alarm.as_vec().expect("FunctionErrorRateAlarm's Metrics");
    let expression = metrics
        .iter()
        .find_map(|m| m["Expression"].as_str())
        .expect("an Expression");
    // (function, metric name) -> the metric's id
    let mut ids = BTreeMap::new();
    for m in metrics {
        let stat = &m["MetricStat"]["Metric"];
        if let (Some(id), Some(name), Some(function)) = (
            m["Id"].as_str(),
            stat["MetricName"].as_str(),
            // `!Ref X` reads as X.
            stat["Dimensions"][0]["Value"].as_str(),
        ) {
            ids.insert((function.to_owned(), name.to_owned()), id.to_owned());
        }
    }
    for function in declared(&template).keys() {
        for name in ["Errors", "Invocations"] {
            let id = ids
                .get(&(function.clone(), name.to_owned()))
                .unwrap_or_else(|| panic!("the alarm has no {name} of {function}: {ids:?}"));
            assert!(
                expression.contains(&format!("FILL({id}, 0)")),
                "the alarm's expression leaves out {id} ({name} of {function}): {expression}"
            );
        }
    }
}
