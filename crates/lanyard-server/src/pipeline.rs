//! Processing: from a complete utterance to its reply and push request.
//!
//! An utterance enters the queue once, from whoever won
//! `Store::mark_complete` (or from start-up recovery). Each step records its
//! result before the next starts, so a crash resumes at the step it stopped:
//! `complete` -> transcribe -> `transcribed` -> reply + outbox -> `replied`.
//!
//! Devices take turns ([`FairQueue`]): one device's flood of utterances
//! waits behind its own, takes at most [`DEVICE_IN_FLIGHT`] of the
//! [`IN_FLIGHT`] slots, and calls the responder at most `[limits]
//! replies_per_sec` (the operator pays for each call). Another device's
//! utterance is served at its next turn.
//!
//! An unmarked utterance (no start marker opened it: an Omi pendant, whose
//! relay ends utterances at the server's endpoint or the frame limit) in
//! which nothing was heard is a quiet room, not a question: it is stored,
//! transcribed as nothing, and finished without a reply
//! (`Utterance::silent`, counted in `lanyard_silent_utterances_total`). A
//! marked one the user opened with the button is answered even so (the
//! responder's "I didn't catch anything").
//!
//! The transcript is the speculative decode `crate::live` made at silence
//! onset when that one covers all the speech; otherwise the audio is read
//! back, decoded and transcribed as a final on the worker pool.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use lanyard_proto::ble::Codec;
use lanyard_proto::wire::{ServerMsg, UtteranceState};
use lanyard_store::Store;
use lanyard_stt::Transcript;
use tokio::sync::{Notify, Semaphore};
use uuid::Uuid;

use crate::audio::AudioStore;
use crate::config::LimitsSection;
use crate::fair::FairQueue;
use crate::hub::Hub;
use crate::limits::TokenBucket;
use crate::live::{Live, LiveFinal};
use crate::metrics::{self, FinalTranscript, SilentUtterance, SttDequeued, SttQueued, Transcribed};
use crate::stt_pool::SttPool;
use crate::{now_ms, transcribe};
use lanyard_respond::{ReplyRequest, Responder};
use lanyard_store::ReplyRecord;

/// Utterances of one device waiting for processing, at most. When its lane
/// is full, whoever completes one more of that device's utterances waits:
/// backpressure reaches that device's relay, which keeps its spool, and no
/// other device's.
const DEVICE_DEPTH: usize = 256;

/// Utterances processed at once. They share the engine through the worker
/// pool, which serves devices in turns, and one utterance's reply or push
/// (a webhook, say) does not hold up the next one's transcription. Bounds
/// memory too: each holds its decoded audio while it waits for the engine
/// (at most `MAX_UTTERANCE_FRAMES` of 20 ms, 19 MB of samples).
const IN_FLIGHT: usize = 8;

/// Utterances of one device processed at once: a device that completes a
/// thousand utterances takes two of the [`IN_FLIGHT`] slots, and the rest
/// stay free for the others (see [`FairQueue`]).
const DEVICE_IN_FLIGHT: usize = 2;

#[derive(Clone)]
pub struct Pipeline {
    shared: Arc<ReplyQueue>,
}

/// The reply queue and its signals, shared by the pipeline's handles and workers.
struct ReplyQueue {
    /// Utterance ids by device, served in turns.
    queue: Mutex<FairQueue<Uuid, Uuid>>,
    /// Something was queued, or a device's in-flight work finished.
    ready: Notify,
    /// A device's lane has room again.
    room: Notify,
}

struct Worker {
    store: Arc<dyn Store>,
    audio: Arc<AudioStore>,
    hub: Arc<Hub>,
    stt: SttPool,
    live: Arc<Live>,
    responder: Arc<dyn Responder>,
    push_wake: Arc<Notify>,
    /// Responder calls per device: the operator pays for each.
    replies: Mutex<HashMap<Uuid, TokenBucket>>,
    limits: LimitsSection,
}

impl Pipeline {
    #[allow(clippy::too_many_arguments)]
    pub fn spawn(
        store: Arc<dyn Store>,
        audio: Arc<AudioStore>,
        hub: Arc<Hub>,
        stt: SttPool,
        live: Arc<Live>,
        responder: Arc<dyn Responder>,
        push_wake: Arc<Notify>,
        limits: LimitsSection,
    ) -> Self {
        let shared = Arc::new(ReplyQueue {
            queue: Mutex::new(FairQueue::new(DEVICE_IN_FLIGHT)),
            ready: Notify::new(),
            room: Notify::new(),
        });
        let worker =
            Worker { store, audio, hub, stt, live, responder, push_wake, replies: Mutex::new(HashMap::new()), limits };
        let worker = Arc::new(worker);
        let slots = Arc::new(Semaphore::new(IN_FLIGHT));
        let dispatch = shared.clone();
        tokio::spawn(async move {
            loop {
                let Ok(slot) = slots.clone().acquire_owned().await else { break };
                let (device, id) = loop {
                    // `ready` keeps a permit when no one waits, so a push
                    // between this pop and the wait is not missed.
                    if let Some(next) = dispatch.queue.lock().expect("pipeline queue poisoned").pop() {
                        break next;
                    }
                    dispatch.ready.notified().await;
                };
                dispatch.room.notify_waiters();
                metrics::emit(SttDequeued);
                let (worker, shared) = (worker.clone(), dispatch.clone());
                tokio::spawn(async move {
                    if let Err(e) = worker.process(id).await {
                        tracing::error!(utterance = %id, error = %e, "processing failed");
                        let _ = worker.store.set_failed(id, &e).await;
                    }
                    shared.queue.lock().expect("pipeline queue poisoned").done(device);
                    shared.ready.notify_one();
                    drop(slot);
                });
            }
        });
        Self { shared }
    }

    /// Queues `device`'s utterance `id` for processing, behind that
    /// device's other utterances only. Waits while the device has
    /// [`DEVICE_DEPTH`] waiting already.
    pub async fn enqueue(&self, device: Uuid, id: Uuid) {
        // Counted before any wait: a full lane shows as a depth above its
        // share.
        metrics::emit(SttQueued);
        loop {
            let room = self.shared.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            {
                let mut queue = self.shared.queue.lock().expect("pipeline queue poisoned");
                if queue.waiting(device) < DEVICE_DEPTH {
                    queue.push(device, id);
                    break;
                }
            }
            room.await;
        }
        self.shared.ready.notify_one();
    }
}

impl Worker {
    /// The final transcript of a complete utterance's first `speech`
    /// frames (of `frames`; see `Utterance::speech_frames`): from the live
    /// state (the speculative decode, or the settled start and a decode of
    /// only the rest), or else decoded in full from the stored audio.
    async fn final_transcript(
        &self,
        id: Uuid,
        codec: Codec,
        device: Uuid,
        frames: u32,
        speech: u32,
    ) -> Result<Transcript, String> {
        let (settled, from) = match self.live.take_final(id, frames, speech).await {
            Some(LiveFinal::Done(transcript)) => {
                metrics::emit(FinalTranscript { speculative: true });
                tracing::debug!("final from the speculative decode at silence onset");
                return Ok(transcript);
            }
            Some(LiveFinal::Rest { settled, from }) => (settled, from),
            None => (Vec::new(), 0),
        };
        let audio = self.audio.clone();
        let pcm = tokio::task::spawn_blocking(move || -> Result<Vec<f32>, String> {
            let data = audio.read(device, id, speech).map_err(|e| format!("reading audio: {e}"))?;
            lanyard_audio::decode_frames(codec, data.iter().map(Vec::as_slice))
                .map_err(|e| format!("decoding audio: {e}"))
        })
        .await
        .map_err(|e| format!("decoding task: {e}"))??;
        let rest = pcm.get(from..).unwrap_or_default().to_vec();
        let transcript =
            self.stt.transcribe_after(device, rest, settled.clone()).await.map_err(|e| format!("transcribing: {e}"))?;
        metrics::emit(FinalTranscript { speculative: false });
        Ok(LiveFinal::joined(settled, from, transcript))
    }

    /// Waits until `device` may call the responder again: at most
    /// `[limits] replies_per_sec`, after a burst of `reply_burst`. The
    /// utterance is only delayed, never dropped; and since a device has at
    /// most [`DEVICE_IN_FLIGHT`] utterances in flight, its wait holds up
    /// no other device.
    async fn reply_turn(&self, device: Uuid) {
        let mut limited = false;
        loop {
            let wait = {
                let mut map = self.replies.lock().expect("reply budget poisoned");
                let now = Instant::now();
                crate::limits::prune(&mut map, now, self.limits.reply_burst, self.limits.replies_per_sec);
                let bucket = map
                    .entry(device)
                    .or_insert_with(|| TokenBucket::new(self.limits.replies_per_sec, self.limits.reply_burst, now));
                if bucket.take(now) {
                    return;
                }
                bucket.wait()
            };
            if !limited {
                limited = true;
                metrics::emit(metrics::Limited { limit: metrics::Limit::Replies });
            }
            tokio::time::sleep(wait).await;
        }
    }

    #[tracing::instrument(skip(self), fields(utterance = %id))]
    async fn process(&self, id: Uuid) -> Result<(), String> {
        let store_err = |e: lanyard_store::StoreError| e.to_string();
        let Some(mut utt) = self.store.utterance(id).await.map_err(store_err)? else {
            return Err("queued utterance is not in the store".into());
        };
        if utt.state == UtteranceState::Complete {
            let Some(codec) = utt.codec else {
                return Err("a text-only utterance cannot be in state complete".into());
            };
            self.store.mark_stt_started(id, now_ms()).await.map_err(store_err)?;
            let final_transcript = self.final_transcript(id, codec, utt.device_id, utt.frames, utt.speech()).await?;
            let (transcript, segments) = if utt.unmarked && final_transcript.text.trim().is_empty() {
                // Exactly empty: that is what `Utterance::silent` reads.
                (String::new(), Vec::new())
            } else {
                (final_transcript.text.clone(), transcribe::wire_segments(&final_transcript.segments))
            };
            let done_ms = now_ms();
            self.store.set_transcript(id, &transcript, &segments, done_ms).await.map_err(store_err)?;
            if let Some(end_ms) = utt.timings.received_end_ms {
                let ttfs = std::time::Duration::from_millis(done_ms.saturating_sub(end_ms).max(0) as u64);
                metrics::emit(Transcribed { ttfs });
            }
            self.audio.close(id);
            // Never the words: logs are kept and shipped where speech must
            // not go. Its length and id say enough to follow it.
            tracing::info!(utterance = %id, chars = transcript.chars().count(), "transcribed");
            let segments_sent = segments.clone();
            self.hub.send(
                utt.device_id,
                &ServerMsg::Final { utterance: id, text: transcript.clone(), segments: segments_sent },
            );
            utt.transcript = Some(transcript);
            utt.segments = segments;
            utt.state = UtteranceState::Transcribed;
        }
        if utt.silent() {
            metrics::emit(SilentUtterance);
            tracing::info!(utterance = %id, frames = utt.frames, "nothing heard in an unmarked utterance; no reply");
            return Ok(());
        }
        if utt.state == UtteranceState::Transcribed {
            let device =
                self.store.device(utt.device_id).await.map_err(store_err)?.ok_or("the utterance's device is gone")?;
            let request = ReplyRequest {
                utterance_id: id,
                device_id: device.id,
                device_name: device.name.clone(),
                transcript: utt.transcript.clone().unwrap_or_default(),
                segments: utt.segments.clone(),
                received_end_ms: utt.timings.received_end_ms.unwrap_or(utt.created_ms),
                audio_secs: utt.speech() as f32 * 0.02,
            };
            self.reply_turn(device.id).await;
            let reply = self
                .responder
                .respond(&request)
                .await
                .map_err(|e| format!("responder {}: {e}", self.responder.name()))?;
            let record = ReplyRecord {
                title: reply.title.clone(),
                body: reply.body.clone(),
                data_json: serde_json::Value::Object(reply.data).to_string(),
            };
            let target = device.push;
            self.store.set_reply(id, &record, target.as_ref(), now_ms()).await.map_err(store_err)?;
            if target.is_some() {
                self.push_wake.notify_one();
            } else {
                tracing::info!(utterance = %id, "device has no push target; the reply goes down the socket only");
            }
            // An open stream gets the reply at once; the push still goes, with
            // the same collapse id, so a suspended app shows it once.
            self.hub.send(utt.device_id, &ServerMsg::Reply { utterance: id, title: reply.title, body: reply.body });
        }
        Ok(())
    }
}
