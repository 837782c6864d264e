//! The Job controller: runs pods until `completions` succeed, at most `parallelism` at a time;
//! fails the Job (BackoffLimitExceeded) once more than `backoffLimit` pods failed or restarted,
//! or (DeadlineExceeded) once it outlives `activeDeadlineSeconds`; Indexed Jobs give each pod
//! its completion index (annotation and `JOB_COMPLETION_INDEX`), one success per index; a
//! finished Job with `ttlSecondsAfterFinished` is deleted, with its pods, that long after.

use std::collections::BTreeSet;
use std::time::Duration;

use k8s_openapi::api::batch::v1::{Job, JobCondition, JobStatus};
use k8s_openapi::api::core::v1::{EnvVar, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use serde_json::json;

use super::controller_of;
use super::runtime::{Action, ObjectKey, Reconciler};
use super::Error;
use crate::api::time;
use crate::client::{Client, DeleteParams, ListParams, Recorder};

pub const INDEX_ANNOTATION: &str = "batch.kubernetes.io/job-completion-index";
pub const JOB_NAME_LABEL: &str = "batch.kubernetes.io/job-name";

pub async fn run(client: Client) {
    let recorder = Recorder::new(client.clone(), "job-controller", None);
    Reconciler::<Job>::new("job", &client)
        .owns::<Pod>()
        .run_by_key(move |key| reconcile(client.clone(), recorder.clone(), key))
        .await
}

fn phase(pod: &Pod) -> &str {
    pod.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("Pending")
}

fn index_of(pod: &Pod) -> Option<i32> {
    pod.metadata
        .annotations
        .as_ref()?
        .get(INDEX_ANNOTATION)?
        .parse()
        .ok()
}

fn finished(job: &Job) -> bool {
    job.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| {
            cs.iter()
                .any(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True")
        })
}

/// `ttlSecondsAfterFinished`: a finished Job is deleted (its pods with it) that long after it
/// completed or failed.
async fn expire(jobs: &crate::client::Api<Job>, job: &Job) -> Result<Action, Error> {
    let Some(ttl) = job.spec.as_ref().and_then(|s| s.ttl_seconds_after_finished) else {
        return Ok(Action::AwaitChange);
    };
    let finished_at = job
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .filter(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True")
        .filter_map(|c| c.last_transition_time.as_ref())
        .map(time::instant)
        .max()
        .unwrap_or_else(chrono::Utc::now);
    let expiry = finished_at + chrono::Duration::seconds(ttl.max(0) as i64);
    let left = expiry - chrono::Utc::now();
    if left > chrono::Duration::zero() {
        return Ok(Action::RequeueAfter(
            left.to_std().unwrap_or_default() + Duration::from_millis(10),
        ));
    }
    let params = DeleteParams {
        uid: job.metadata.uid.clone(),
        propagation_policy: Some("Background"),
        ..Default::default()
    };
    match jobs
        .delete(job.metadata.name.as_deref().unwrap_or_default(), &params)
        .await
    {
        Ok(()) => Ok(Action::AwaitChange),
        Err(e) if e.is_not_found() => Ok(Action::AwaitChange),
        Err(e) => Err(e.into()),
    }
}

async fn reconcile(client: Client, recorder: Recorder, key: ObjectKey) -> Result<Action, Error> {
    let (namespace, name) = (key.namespace.as_str(), key.name.as_str());
    let jobs = client.api::<Job>(Some(namespace));
    let Some(job) = jobs.get_opt(name).await? else {
        return Ok(Action::AwaitChange);
    };
    if job.metadata.deletion_timestamp.is_some() {
        return Ok(Action::AwaitChange);
    }
    if finished(&job) {
        return expire(&jobs, &job).await;
    }
    let spec = job.spec.clone().unwrap_or_default();
    let uid = job.metadata.uid.clone().unwrap_or_default();
    let pods_api = client.api::<Pod>(Some(namespace));
    let pods: Vec<Pod> = pods_api
        .list(&ListParams::default().labels(&format!("{JOB_NAME_LABEL}={name}")))
        .await?
        .items
        .into_iter()
        .filter(|p| controller_of(&p.metadata).is_some_and(|o| o.uid == uid))
        .collect();
    let indexed = spec.completion_mode.as_deref() == Some("Indexed");
    let completions = spec.completions.unwrap_or(1).max(0);
    let parallelism = spec.parallelism.unwrap_or(1).max(0);
    let succeeded_indexes: BTreeSet<i32> = pods
        .iter()
        .filter(|p| phase(p) == "Succeeded")
        .filter_map(index_of)
        .collect();
    let succeeded = if indexed {
        succeeded_indexes.len() as i32
    } else {
        pods.iter().filter(|p| phase(p) == "Succeeded").count() as i32
    };
    let failed_pods = pods.iter().filter(|p| phase(p) == "Failed").count() as i32;
    let restarts: i32 = pods
        .iter()
        .flat_map(|p| {
            p.status
                .as_ref()
                .and_then(|s| s.container_statuses.clone())
                .unwrap_or_default()
        })
        .map(|c| c.restart_count)
        .sum();
    let failed = failed_pods + restarts;
    let active: Vec<&Pod> = pods
        .iter()
        .filter(|p| {
            p.metadata.deletion_timestamp.is_none() && !matches!(phase(p), "Succeeded" | "Failed")
        })
        .collect();
    let now = chrono::Utc::now();
    let start = job
        .status
        .as_ref()
        .and_then(|s| s.start_time.as_ref())
        .map(time::instant)
        .unwrap_or(now);
    // When the deadline falls; a deadline past what a clock can hold never passes.
    let deadline = spec
        .active_deadline_seconds
        .and_then(chrono::TimeDelta::try_seconds)
        .and_then(|d| start.checked_add_signed(d));
    let deadline_passed = deadline.is_some_and(|deadline| now > deadline);

    let verdict = if succeeded >= completions {
        Some(("Complete", None, None))
    } else if failed > spec.backoff_limit.unwrap_or(6) {
        Some((
            "Failed",
            Some("BackoffLimitExceeded"),
            Some("Job has reached the specified backoff limit"),
        ))
    } else if deadline_passed {
        Some((
            "Failed",
            Some("DeadlineExceeded"),
            Some("Job was active longer than specified deadline"),
        ))
    } else {
        None
    };
    let mut active_count = active.len() as i32;
    if let Some((outcome, _, _)) = verdict {
        if outcome == "Failed" {
            for pod in &active {
                let _ = pods_api
                    .delete(
                        pod.metadata.name.as_deref().unwrap_or(""),
                        &DeleteParams {
                            uid: pod.metadata.uid.clone(),
                            ..Default::default()
                        },
                    )
                    .await;
            }
            active_count = 0;
        }
    } else {
        let remaining = completions - succeeded;
        let wanted = parallelism.min(remaining) - active_count;
        if wanted > 0 {
            let busy: BTreeSet<i32> = active.iter().filter_map(|p| index_of(p)).collect();
            let mut free =
                (0..completions).filter(|i| !succeeded_indexes.contains(i) && !busy.contains(i));
            for _ in 0..wanted {
                let index = if indexed { free.next() } else { None };
                if indexed && index.is_none() {
                    break;
                }
                let created = pods_api.create(&job_pod(&job, index)).await?;
                recorder.normal(
                    &job,
                    "SuccessfulCreate",
                    &format!(
                        "Created pod: {}",
                        created.metadata.name.clone().unwrap_or_default()
                    ),
                );
                active_count += 1;
            }
        }
    }
    let mut conditions = job
        .status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default();
    let mut completion_time = None;
    if let Some((outcome, reason, message)) = verdict {
        conditions.push(JobCondition {
            type_: outcome.into(),
            status: "True".into(),
            reason: reason.map(str::to_string),
            message: message.map(str::to_string),
            last_probe_time: Some(time::time(now)),
            last_transition_time: Some(time::time(now)),
        });
        if outcome == "Complete" {
            completion_time = Some(time::time(now));
        }
        let event = format!(
            "Job {}",
            if outcome == "Complete" {
                "completed".to_string()
            } else {
                format!("failed: {}", message.unwrap_or(""))
            }
        );
        if outcome == "Complete" {
            recorder.normal(&job, "Completed", &event);
        } else {
            recorder.warning(&job, reason.unwrap_or("Failed"), &event);
        }
    }
    let status = JobStatus {
        active: Some(active_count),
        succeeded: Some(succeeded),
        failed: Some(failed),
        start_time: Some(time::time(start)),
        completion_time,
        conditions: if conditions.is_empty() {
            None
        } else {
            Some(conditions)
        },
        completed_indexes: indexed
            .then(|| {
                succeeded_indexes
                    .iter()
                    .map(i32::to_string)
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .filter(|s| !s.is_empty()),
        ..Default::default()
    };
    if job.status.as_ref() != Some(&status) {
        jobs.patch_status(name, &json!({"status": status})).await?;
    }
    Ok(match (verdict, deadline) {
        // Look again when the deadline passes, not before.
        (None, Some(deadline)) => Action::RequeueAfter(
            (deadline - chrono::Utc::now())
                .to_std()
                .unwrap_or_default()
                .saturating_add(Duration::from_millis(50)),
        ),
        _ => Action::AwaitChange,
    })
}

fn job_pod(job: &Job, index: Option<i32>) -> Pod {
    let template = job
        .spec
        .as_ref()
        .map(|s| s.template.clone())
        .unwrap_or_default();
    let meta = template.metadata.unwrap_or_default();
    let name = job.metadata.name.clone().unwrap_or_default();
    let mut labels = meta.labels.unwrap_or_default();
    labels.insert(JOB_NAME_LABEL.into(), name.clone());
    labels.insert("job-name".into(), name.clone());
    let mut annotations = meta.annotations.unwrap_or_default();
    let mut spec = template.spec.unwrap_or_default();
    if let Some(index) = index {
        annotations.insert(INDEX_ANNOTATION.into(), index.to_string());
        for container in &mut spec.containers {
            container.env.get_or_insert_with(Vec::new).push(EnvVar {
                name: "JOB_COMPLETION_INDEX".into(),
                value: Some(index.to_string()),
                value_from: None,
            });
        }
    }
    let generate_name = match index {
        Some(index) => format!("{name}-{index}-"),
        None => format!("{name}-"),
    };
    Pod {
        metadata: ObjectMeta {
            generate_name: Some(generate_name),
            namespace: job.metadata.namespace.clone(),
            labels: Some(labels),
            annotations: Some(annotations),
            owner_references: Some(vec![OwnerReference {
                api_version: "batch/v1".into(),
                kind: "Job".into(),
                name,
                uid: job.metadata.uid.clone().unwrap_or_default(),
                controller: Some(true),
                block_owner_deletion: Some(true),
            }]),
            ..Default::default()
        },
        spec: Some(spec),
        status: None,
    }
}
