//! The one writer thread and its queue (group commit).
//!
//! Export calls and approval events hand their entries to the writer over a
//! channel. The writer takes every job waiting at that moment and commits
//! them together (one write and one fdatasync for the records of all of
//! them), then answers each: many concurrent filters share the cost of a
//! sync. A job is answered only once its entries are durable.

use anyhow::Result;
use std::sync::mpsc;
use std::time::Duration;
use tokio::sync::oneshot;
use tracegate_proto::v1::{AlertDelivered, ApprovalEvent, Record};

use crate::ledger::writer::{Appended, Ledger};

/// Records committed together at most (bounds one write's size).
const MAX_GROUP_RECORDS: usize = 8192;
/// How often the idle writer rolls old segments and refreshes HEAD.
const TICK: Duration = Duration::from_millis(500);

enum Job {
    Records {
        records: Vec<Record>,
        reply: oneshot::Sender<Appended>,
    },
    Events {
        events: Vec<ApprovalEvent>,
        reply: oneshot::Sender<()>,
    },
    /// Webhooks acknowledged these alerts (no answer: a lost marker only
    /// means one more delivery after a restart).
    Delivered(Vec<AlertDelivered>),
}

/// A handle to the writer: cheap to clone, one per service.
#[derive(Clone)]
pub struct Committer {
    jobs: mpsc::SyncSender<Job>,
}

#[derive(Debug)]
pub struct Stopped;

impl std::fmt::Display for Stopped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the store is not accepting writes (shutting down or failed)")
    }
}

impl Committer {
    async fn send(&self, job: Job) -> Result<(), Stopped> {
        // Straight onto the queue when it has room (the usual case: no
        // thread hand-off on the path of a write-ahead call).
        let job = match self.jobs.try_send(job) {
            Ok(()) => return Ok(()),
            Err(mpsc::TrySendError::Disconnected(_)) => return Err(Stopped),
            Err(mpsc::TrySendError::Full(job)) => job,
        };
        let jobs = self.jobs.clone();
        // The queue is full: waiting for room blocks, which must not stall
        // an async worker.
        tokio::task::spawn_blocking(move || jobs.send(job))
            .await
            .map_err(|_| Stopped)?
            .map_err(|_| Stopped)
    }

    /// Stores records; answers once they are durable.
    pub async fn records(&self, records: Vec<Record>) -> Result<Appended, Stopped> {
        let (reply, answer) = oneshot::channel();
        self.send(Job::Records { records, reply }).await?;
        answer.await.map_err(|_| Stopped)
    }

    /// Stores approval events; answers once they are durable.
    pub async fn events(&self, events: Vec<ApprovalEvent>) -> Result<(), Stopped> {
        let (reply, answer) = oneshot::channel();
        self.send(Job::Events { events, reply }).await?;
        answer.await.map_err(|_| Stopped)
    }
}

impl Committer {
    /// Stores delivery markers, from a plain thread (blocks while the
    /// queue is full).
    pub fn delivered_blocking(&self, marks: Vec<AlertDelivered>) -> Result<(), Stopped> {
        self.jobs.send(Job::Delivered(marks)).map_err(|_| Stopped)
    }
}

/// Starts the writer thread. It ends when every `Committer` is dropped; a
/// failed write or fdatasync ends the process (exit 70) without answering.
pub fn spawn(ledger: Ledger) -> Result<(Committer, std::thread::JoinHandle<()>)> {
    let (jobs, queue) = mpsc::sync_channel::<Job>(1024);
    let handle = std::thread::Builder::new()
        .name("ledger-writer".into())
        .spawn(move || {
            if let Err(e) = write_loop(ledger, queue) {
                // A failed write or fsync may have lost data the kernel had
                // accepted: acknowledge nothing more; restart recovers from
                // what is on disk.
                eprintln!("tracegate: store write failed, stopping: {e:#}");
                std::process::exit(70);
            }
        })?;
    Ok((Committer { jobs }, handle))
}

fn write_loop(mut ledger: Ledger, jobs: mpsc::Receiver<Job>) -> Result<()> {
    loop {
        let first = match jobs.recv_timeout(TICK) {
            Ok(job) => job,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                ledger.tick()?;
                continue;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        };
        let mut group = vec![first];
        let mut n = 0;
        while n < MAX_GROUP_RECORDS {
            match jobs.try_recv() {
                Ok(job) => {
                    if let Job::Records { records, .. } = &job {
                        n += records.len();
                    }
                    group.push(job);
                }
                Err(_) => break,
            }
        }
        let mut calls = Vec::new();
        let mut record_replies = Vec::new();
        let mut events = Vec::new();
        let mut event_replies = Vec::new();
        let mut delivered = Vec::new();
        for job in group {
            match job {
                Job::Records { records, reply } => {
                    calls.push(records);
                    record_replies.push(reply);
                }
                Job::Events {
                    events: mut e,
                    reply,
                } => {
                    events.append(&mut e);
                    event_replies.push(reply);
                }
                Job::Delivered(mut marks) => delivered.append(&mut marks),
            }
        }
        // An error here is a failed write or fdatasync: nothing of this
        // group is answered, and the thread's caller exits.
        if !calls.is_empty() {
            let results = ledger.append(&calls)?;
            for (reply, result) in record_replies.into_iter().zip(results) {
                let _ = reply.send(result);
            }
        }
        if !events.is_empty() {
            ledger.append_events(&events)?;
            for reply in event_replies {
                let _ = reply.send(());
            }
        }
        ledger.append_delivered(&delivered)?;
    }
    ledger.close()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A queue with room takes the job at once; a full one makes the
    /// sender wait for room (off the async worker), not fail.
    #[tokio::test]
    async fn a_full_queue_waits_for_room() {
        let (jobs, queue) = mpsc::sync_channel::<Job>(1);
        let committer = Committer { jobs };
        committer
            .send(Job::Delivered(Vec::new()))
            .await
            .expect("room: sent at once");
        let waiting = tokio::spawn({
            let committer = committer.clone();
            async move { committer.send(Job::Delivered(Vec::new())).await }
        });
        // The second job cannot be queued until the first is taken. A job
        // lost instead of queued fails the second receive (no hang).
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        let taken = || queue.recv_timeout(std::time::Duration::from_secs(10));
        assert!(matches!(taken(), Ok(Job::Delivered(_))));
        waiting
            .await
            .expect("task")
            .expect("sent once there was room");
        assert!(matches!(taken(), Ok(Job::Delivered(_))));
        drop(queue);
        assert!(committer.send(Job::Delivered(Vec::new())).await.is_err());
    }
}
