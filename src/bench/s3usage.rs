//! `geonex bench s3-usage`: fills a bucket with many objects under several
//! prefixes, then times this project's usage scan and
//! `aws s3 ls --recursive --summarize` on the same data, and prints both with
//! the ratio. Meant for an emulator or a scratch bucket; it is not a test.

use std::io::Write;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use async_trait::async_trait;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{Delete, ObjectIdentifier};
use futures::StreamExt;
use geonex_shared::config::Settings;
use geonex_shared::store::usage::S3Output;
use geonex_worker::s3usage::{Scanner, Totals};
use geonex_worker::storage::s3::S3ObjectStore;
use geonex_worker::storage::{ListPage, ObjectStore, StorageError};

#[derive(Debug, Clone, clap::Args)]
pub struct S3UsageBench {
    /// Objects to create.
    #[arg(long, default_value_t = 100_000)]
    pub objects: usize,
    /// Top-level prefixes they are spread over (each with 10 sub-folders).
    #[arg(long, default_value_t = 10)]
    pub prefixes: usize,
    /// S3 endpoint (an emulator); defaults to GEONEX_S3USAGE__ENDPOINT_URL.
    #[arg(long)]
    pub endpoint_url: Option<String>,
    /// Concurrent uploads while filling the bucket.
    #[arg(long, default_value_t = 64)]
    pub upload_concurrency: usize,
    /// Keep the bucket afterwards (it is deleted otherwise).
    #[arg(long)]
    pub keep: bool,
    /// Scan this existing bucket instead of filling a new one (for a real S3
    /// bucket, or one kept from an earlier run). Nothing is written to it or
    /// deleted; the scan is checked against the awscli summary instead.
    #[arg(long)]
    pub bucket: Option<String>,
}

fn progress(label: &str, done: usize, total: usize) {
    eprint!("\r{label}: {done}/{total} ({}%)   ", done * 100 / total.max(1));
    let _ = std::io::stderr().flush();
}

/// Counts what the scan has listed and reports it about once a second.
struct Progress<S> {
    inner: S,
    objects: AtomicI64,
    started: Instant,
    last: AtomicI64,
}

#[async_trait]
impl<S: ObjectStore> ObjectStore for Progress<S> {
    async fn list_page(
        &self,
        bucket: &str,
        prefix: &str,
        delimiter: Option<&str>,
        token: Option<String>,
    ) -> Result<ListPage, StorageError> {
        let page = self.inner.list_page(bucket, prefix, delimiter, token).await?;
        let seen = self.objects.fetch_add(page.objects, Ordering::Relaxed) + page.objects;
        let secs = self.started.elapsed().as_secs() as i64;
        if self.last.swap(secs, Ordering::Relaxed) != secs {
            eprint!("\rscanning: {seen} objects listed   ");
            let _ = std::io::stderr().flush();
        }
        Ok(page)
    }

    fn label(&self) -> String {
        self.inner.label()
    }
}

struct AwsCliRun {
    elapsed: Duration,
    objects: i64,
    bytes: i64,
}

async fn aws_cli(endpoint: Option<&str>, bucket: &str, page_size: Option<u32>) -> anyhow::Result<AwsCliRun> {
    let mut cmd = tokio::process::Command::new("aws");
    if let Some(url) = endpoint {
        cmd.args(["--endpoint-url", url]);
    }
    cmd.args(["s3", "ls", &format!("s3://{bucket}"), "--recursive", "--summarize"]);
    if let Some(n) = page_size {
        cmd.args(["--page-size", &n.to_string()]);
    }
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
    let started = Instant::now();
    let child = cmd.spawn().context("running `aws` (install awscli)")?;
    let wait = child.wait_with_output();
    tokio::pin!(wait);
    let out = loop {
        tokio::select! {
            out = &mut wait => break out?,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {
                eprint!("\raws s3 ls: {}s   ", started.elapsed().as_secs());
                let _ = std::io::stderr().flush();
            }
        }
    };
    let elapsed = started.elapsed();
    if !out.status.success() {
        bail!("aws s3 ls failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |name: &str| -> anyhow::Result<i64> {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("no `{name}` in the aws s3 ls summary"))
    };
    Ok(AwsCliRun { elapsed, objects: field("Total Objects:")?, bytes: field("Total Size:")? })
}

/// Keys spread like runner outputs: prefix / day folder / file, with sizes
/// 1 to 997 bytes.
fn bench_keys(objects: usize, prefixes: usize) -> Vec<(String, usize)> {
    let prefixes = prefixes.max(1);
    (0..objects).map(|i| (format!("out{:02}/day{}/{i:07}.nc", i % prefixes, (i / prefixes) % 10), i % 997 + 1)).collect()
}

async fn fill(client: &aws_sdk_s3::Client, bucket: &str, keys: &[(String, usize)], concurrency: usize) -> anyhow::Result<()> {
    client.create_bucket().bucket(bucket).send().await.context("creating the bucket")?;
    let started = Instant::now();
    let total = keys.len();
    let done = AtomicI64::new(0);
    let results: Vec<anyhow::Result<()>> = futures::stream::iter(keys.iter())
        .map(|(key, size)| {
            let done = &done;
            async move {
                client
                    .put_object()
                    .bucket(bucket)
                    .key(key)
                    .body(ByteStream::from(vec![b'g'; *size]))
                    .send()
                    .await
                    .with_context(|| format!("putting {key}"))?;
                let n = done.fetch_add(1, Ordering::Relaxed) as usize + 1;
                if n.is_multiple_of((total / 100).max(1)) || n == total {
                    progress("uploading", n, total);
                }
                Ok(())
            }
        })
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;
    results.into_iter().collect::<anyhow::Result<Vec<()>>>()?;
    eprintln!("\nuploaded {total} objects in {:.1}s", started.elapsed().as_secs_f64());
    Ok(())
}

async fn clean_up(client: &aws_sdk_s3::Client, bucket: &str, keys: &[(String, usize)]) -> anyhow::Result<()> {
    let mut deleted = 0;
    for chunk in keys.chunks(1000) {
        let objects = chunk
            .iter()
            .map(|(k, _)| ObjectIdentifier::builder().key(k.as_str()).build())
            .collect::<Result<Vec<_>, _>>()?;
        client
            .delete_objects()
            .bucket(bucket)
            .delete(Delete::builder().set_objects(Some(objects)).quiet(true).build()?)
            .send()
            .await
            .context("deleting objects")?;
        deleted += chunk.len();
        progress("cleaning up", deleted, keys.len());
    }
    client.delete_bucket().bucket(bucket).send().await.context("deleting the bucket")?;
    eprintln!("\ndeleted s3://{bucket}");
    Ok(())
}

pub async fn run(args: S3UsageBench, mut settings: Settings) -> anyhow::Result<()> {
    if let Some(url) = &args.endpoint_url {
        settings.s3usage.endpoint_url = Some(url.clone());
    }
    if settings.s3usage.endpoint_url.is_some() {
        settings.s3usage.force_path_style = true;
    }
    let endpoint = settings.s3usage.endpoint_url.clone();
    let aws = crate::startup::aws_config_for_usage(&settings).await;
    let store = S3ObjectStore::with_config(&aws, &settings.s3usage);
    let client = store.client().clone();

    let (bucket, keys) = match &args.bucket {
        Some(existing) => (existing.clone(), Vec::new()),
        None => {
            let bucket = format!("geonex-bench-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
            let keys = bench_keys(args.objects, args.prefixes);
            eprintln!("filling s3://{bucket} on {}", store.label());
            fill(&client, &bucket, &keys, args.upload_concurrency).await?;
            (bucket, keys)
        }
    };
    let measured = measure(&store, &settings, endpoint.as_deref(), &bucket, &keys).await;
    if args.bucket.is_some() {
        return measured;
    }
    if args.keep {
        eprintln!("kept s3://{bucket}");
    } else {
        clean_up(&client, &bucket, &keys).await?;
    }
    measured
}

/// Times the scan and the awscli listings of `bucket`, checks that all agree
/// (with the known totals of `keys` when the bench filled the bucket) and
/// prints the figures.
async fn measure(
    store: &S3ObjectStore,
    settings: &Settings,
    endpoint: Option<&str>,
    bucket: &str,
    keys: &[(String, usize)],
) -> anyhow::Result<()> {
    let output = S3Output::parse("bucket", &format!("s3://{bucket}"))?;
    let counting = Arc::new(Progress {
        inner: store.clone(),
        objects: AtomicI64::new(0),
        started: Instant::now(),
        last: AtomicI64::new(-1),
    });
    let scanner = Scanner::new(counting, settings.s3usage.list_concurrency, settings.s3usage.split_depth);
    let t = Instant::now();
    let ours = scanner.scan(&output).await.context("scanning")?;
    let ours_elapsed = t.elapsed();
    eprintln!("\rscan done in {:.2}s                 ", ours_elapsed.as_secs_f64());

    let cli = aws_cli(endpoint, bucket, None).await?;
    eprintln!("\raws s3 ls done        ");
    let cli_1000 = aws_cli(endpoint, bucket, Some(1000)).await?;
    eprintln!("\raws s3 ls --page-size 1000 done        ");
    let expected = if keys.is_empty() {
        Totals { objects: cli.objects, bytes: cli.bytes }
    } else {
        Totals { objects: keys.len() as i64, bytes: keys.iter().map(|(_, size)| *size as i64).sum() }
    };
    if ours != expected {
        bail!("the scan found {ours:?}, expected {expected:?}");
    }
    for run in [&cli, &cli_1000] {
        if (run.objects, run.bytes) != (expected.objects, expected.bytes) {
            bail!("aws s3 ls summarized {} objects / {} bytes, expected {expected:?}", run.objects, run.bytes);
        }
    }

    let secs = |d: Duration| d.as_secs_f64();
    println!("s3://{bucket}: {} objects, {} bytes", expected.objects, expected.bytes);
    println!(
        "geonex scan (list concurrency {}, split depth {}): {:.2}s",
        settings.s3usage.list_concurrency,
        settings.s3usage.split_depth,
        secs(ours_elapsed)
    );
    println!("aws s3 ls --recursive --summarize: {:.2}s", secs(cli.elapsed));
    println!("ratio (aws s3 ls / geonex scan): {:.1}x", secs(cli.elapsed) / secs(ours_elapsed).max(1e-9));
    println!("aws s3 ls --recursive --summarize --page-size 1000: {:.2}s", secs(cli_1000.elapsed));
    println!(
        "ratio (aws s3 ls --page-size 1000 / geonex scan): {:.1}x",
        secs(cli_1000.elapsed) / secs(ours_elapsed).max(1e-9)
    );
    Ok(())
}
