//! Processing: from a complete utterance to its reply and push request.
//!
//! An utterance enters the queue once, from whoever won
//! `Store::mark_complete` (or from start-up recovery). Each step records its
//! result before the next starts, so a crash resumes at the step it stopped:
//! `complete` -> transcribe -> `transcribed` -> reply + outbox -> `replied`.
//!
//! The transcript is the speculative decode `crate::live` made at silence
//! onset when that one covers all the speech; otherwise the audio is read
//! back, decoded and transcribed as a final on the worker pool.

use std::sync::Arc;

use lanyard_proto::ble::Codec;
use lanyard_proto::wire::{ServerMsg, UtteranceState};
use lanyard_stt::Transcript;
use lanyard_store::Store;
use tokio::sync::{Notify, Semaphore, mpsc};
use uuid::Uuid;

use crate::audio::AudioStore;
use crate::hub::Hub;
use crate::live::{Live, LiveFinal};
use crate::metrics::{self, FinalTranscript, SttDequeued, SttQueued, Transcribed};
use crate::stt_pool::SttPool;
use crate::{now_ms, transcribe};
use lanyard_respond::{ReplyRequest, Responder};
use lanyard_store::ReplyRecord;

/// Utterances waiting for processing. When full, whoever completes an
/// utterance waits: backpressure reaches the relay, which keeps its spool.
const QUEUE_DEPTH: usize = 1024;

/// Utterances processed at once. They share the engine through the worker
/// pool, which serves devices in turns, and one utterance's reply or push
/// (a webhook, say) does not hold up the next one's transcription. Bounds
/// memory too: each holds its decoded audio while it waits for the engine
/// (at most `MAX_UTTERANCE_FRAMES` of 20 ms, 19 MB of samples).
const IN_FLIGHT: usize = 8;

#[derive(Clone)]
pub struct Pipeline {
    tx: mpsc::Sender<Uuid>,
}

struct Worker {
    store: Arc<dyn Store>,
    audio: Arc<AudioStore>,
    hub: Arc<Hub>,
    stt: SttPool,
    live: Arc<Live>,
    responder: Arc<dyn Responder>,
    push_wake: Arc<Notify>,
}

impl Pipeline {
    pub fn spawn(
        store: Arc<dyn Store>,
        audio: Arc<AudioStore>,
        hub: Arc<Hub>,
        stt: SttPool,
        live: Arc<Live>,
        responder: Arc<dyn Responder>,
        push_wake: Arc<Notify>,
    ) -> Self {
        let (tx, mut rx) = mpsc::channel(QUEUE_DEPTH);
        let worker = Worker { store, audio, hub, stt, live, responder, push_wake };
        let worker = Arc::new(worker);
        let slots = Arc::new(Semaphore::new(IN_FLIGHT));
        tokio::spawn(async move {
            while let Some(id) = rx.recv().await {
                let Ok(slot) = slots.clone().acquire_owned().await else { break };
                metrics::emit(SttDequeued);
                let worker = worker.clone();
                tokio::spawn(async move {
                    if let Err(e) = worker.process(id).await {
                        tracing::error!(utterance = %id, error = %e, "processing failed");
                        let _ = worker.store.set_failed(id, &e).await;
                    }
                    drop(slot);
                });
            }
        });
        Self { tx }
    }

    pub async fn enqueue(&self, id: Uuid) {
        // Counted before the send, which waits while the queue is full: a
        // full queue shows as a depth above QUEUE_DEPTH.
        metrics::emit(SttQueued);
        if self.tx.send(id).await.is_err() {
            metrics::emit(SttDequeued);
            tracing::error!(utterance = %id, "pipeline is gone; the utterance will be resumed at restart");
        }
    }
}

impl Worker {
    /// The final transcript of a complete utterance: from the live state
    /// (the speculative decode, or the settled start and a decode of only
    /// the rest), or else decoded in full from the stored audio.
    async fn final_transcript(&self, id: Uuid, codec: Codec, device: Uuid, frames: u32) -> Result<Transcript, String> {
        let (settled, from) = match self.live.take_final(id, frames).await {
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
            let data = audio.read(device, id, frames).map_err(|e| format!("reading audio: {e}"))?;
            lanyard_audio::decode_frames(codec, data.iter().map(Vec::as_slice)).map_err(|e| format!("decoding audio: {e}"))
        })
        .await
        .map_err(|e| format!("decoding task: {e}"))??;
        let rest = pcm.get(from..).unwrap_or_default().to_vec();
        let transcript =
            self.stt.transcribe_after(device, rest, settled.clone()).await.map_err(|e| format!("transcribing: {e}"))?;
        metrics::emit(FinalTranscript { speculative: false });
        Ok(LiveFinal::joined(settled, from, transcript))
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
            let final_transcript = self.final_transcript(id, codec, utt.device_id, utt.frames).await?;
            let (transcript, segments) =
                (final_transcript.text.clone(), transcribe::wire_segments(&final_transcript.segments));
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
            self.hub.send(utt.device_id, &ServerMsg::Final { utterance: id, text: transcript.clone(), segments: segments_sent });
            utt.transcript = Some(transcript);
            utt.segments = segments;
            utt.state = UtteranceState::Transcribed;
        }
        if utt.state == UtteranceState::Transcribed {
            let device = self.store.device(utt.device_id).await.map_err(store_err)?.ok_or("the utterance's device is gone")?;
            let request = ReplyRequest {
                utterance_id: id,
                device_id: device.id,
                device_name: device.name.clone(),
                transcript: utt.transcript.clone().unwrap_or_default(),
                segments: utt.segments.clone(),
                received_end_ms: utt.timings.received_end_ms.unwrap_or(utt.created_ms),
                audio_secs: utt.frames as f32 * 0.02,
            };
            let reply = self.responder.respond(&request).await.map_err(|e| format!("responder {}: {e}", self.responder.name()))?;
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
