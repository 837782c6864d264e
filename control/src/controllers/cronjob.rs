//! The CronJob controller: at each time its schedule names, a CronJob creates a Job from its
//! template (unless suspended; `concurrencyPolicy` Allow, Forbid or Replace), records
//! `lastScheduleTime` and its active Jobs, and keeps `successfulJobsHistoryLimit` /
//! `failedJobsHistoryLimit` finished Jobs. Schedules are `api::cron` (five-field cron, UTC).

use std::time::Duration;

use chrono::{DateTime, Utc};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use serde_json::json;

use super::replicaset::controller_of;
use crate::api::cron::Schedule;
use crate::client::{Client, DeleteParams, ListParams, Recorder};

pub async fn run(client: Client) {
    let recorder = Recorder::new(client.clone(), "cronjob-controller", None);
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let Ok(list) = client
            .api::<CronJob>(None)
            .list(&ListParams::default())
            .await
        else {
            continue;
        };
        for cronjob in list.items {
            if let Err(e) = reconcile(&client, &recorder, &cronjob).await {
                tracing::debug!("cronjob {:?}: {e}", cronjob.metadata.name);
            }
        }
    }
}

fn finished(job: &Job) -> Option<bool> {
    let conditions = job.status.as_ref()?.conditions.as_ref()?;
    conditions
        .iter()
        .find(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True")
        .map(|c| c.type_ == "Complete")
}

async fn reconcile(client: &Client, recorder: &Recorder, cronjob: &CronJob) -> Result<(), String> {
    let namespace = cronjob.metadata.namespace.clone().unwrap_or_default();
    let name = cronjob.metadata.name.clone().unwrap_or_default();
    let spec = cronjob.spec.clone().unwrap_or_default();
    let jobs_api = client.api::<Job>(Some(&namespace));
    let uid = cronjob.metadata.uid.clone().unwrap_or_default();
    let mut owned: Vec<Job> = jobs_api
        .list(&ListParams::default())
        .await
        .map_err(|e| e.to_string())?
        .items
        .into_iter()
        .filter(|j| {
            controller_of(&j.metadata).is_some_and(|o| o.uid == uid)
                && j.metadata.deletion_timestamp.is_none()
        })
        .collect();
    owned.sort_by_key(|j| j.metadata.creation_timestamp.clone().map(|t| t.0));
    let mut active: Vec<&Job> = owned.iter().filter(|j| finished(j).is_none()).collect();
    let schedule = Schedule::parse(&spec.schedule)?;
    let now = Utc::now();
    let last = cronjob
        .status
        .as_ref()
        .and_then(|s| s.last_schedule_time.clone())
        .map(|t| t.0);
    let since = last
        .or(cronjob.metadata.creation_timestamp.clone().map(|t| t.0))
        .unwrap_or(now);
    let mut scheduled = None;
    if spec.suspend != Some(true) {
        if let Some(time) = schedule.last_between(since, now) {
            let policy = spec.concurrency_policy.as_deref().unwrap_or("Allow");
            let skip = policy == "Forbid" && !active.is_empty();
            if policy == "Replace" {
                for job in active.drain(..) {
                    let job_name = job.metadata.name.clone().unwrap_or_default();
                    let _ = jobs_api.delete(&job_name, &DeleteParams::default()).await;
                }
            }
            if !skip {
                let job = job_for(cronjob, time);
                match jobs_api.create(&job).await {
                    Ok(created) => {
                        recorder
                            .normal(
                                cronjob,
                                "SuccessfulCreate",
                                &format!(
                                    "Created job {}",
                                    created.metadata.name.clone().unwrap_or_default()
                                ),
                            )
                            .await
                    }
                    Err(e) if e.is_conflict() => {}
                    Err(e) => return Err(e.to_string()),
                }
            }
            scheduled = Some(time);
        }
    }
    // History: keep the newest finished Jobs up to the limits.
    for (succeeded, limit) in [
        (true, spec.successful_jobs_history_limit.unwrap_or(3)),
        (false, spec.failed_jobs_history_limit.unwrap_or(1)),
    ] {
        let done: Vec<&Job> = owned
            .iter()
            .filter(|j| finished(j) == Some(succeeded))
            .collect();
        for job in done
            .iter()
            .take(done.len().saturating_sub(limit.max(0) as usize))
        {
            let _ = jobs_api
                .delete(
                    job.metadata.name.as_deref().unwrap_or(""),
                    &DeleteParams::default(),
                )
                .await;
        }
    }
    let active_refs: Vec<ObjectReference> = owned
        .iter()
        .filter(|j| finished(j).is_none())
        .map(|j| ObjectReference {
            api_version: Some("batch/v1".into()),
            kind: Some("Job".into()),
            name: j.metadata.name.clone(),
            namespace: j.metadata.namespace.clone(),
            uid: j.metadata.uid.clone(),
            ..Default::default()
        })
        .collect();
    let mut status = json!({"active": active_refs});
    if let Some(time) = scheduled.or(last) {
        status["lastScheduleTime"] = json!(time.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
    }
    let current = serde_json::to_value(&cronjob.status).unwrap_or_default();
    if current.get("active").cloned().unwrap_or(json!([])) != status["active"]
        || current.get("lastScheduleTime") != status.get("lastScheduleTime")
    {
        client
            .api::<CronJob>(Some(&namespace))
            .patch_status(&name, &json!({"status": status}))
            .await
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

fn job_for(cronjob: &CronJob, time: DateTime<Utc>) -> Job {
    let template = cronjob
        .spec
        .as_ref()
        .map(|s| s.job_template.clone())
        .unwrap_or_default();
    let name = cronjob.metadata.name.clone().unwrap_or_default();
    let meta = template.metadata.unwrap_or_default();
    Job {
        metadata: ObjectMeta {
            // One name per scheduled minute, so a schedule fires once even if seen twice.
            name: Some(format!("{name}-{}", time.timestamp() / 60)),
            namespace: cronjob.metadata.namespace.clone(),
            labels: meta.labels,
            annotations: meta.annotations,
            owner_references: Some(vec![OwnerReference {
                api_version: "batch/v1".into(),
                kind: "CronJob".into(),
                name,
                uid: cronjob.metadata.uid.clone().unwrap_or_default(),
                controller: Some(true),
                block_owner_deletion: Some(true),
            }]),
            ..Default::default()
        },
        spec: Some(template.spec.unwrap_or_default()),
        status: None,
    }
}
