//! Processing: from a complete utterance to its reply and push request.
//!
//! An utterance enters the queue once, from whoever won
//! `Store::mark_complete` (or from start-up recovery). Each step records its
//! result before the next starts, so a crash resumes at the step it stopped:
//! `complete` -> transcribe -> `transcribed` -> reply + outbox -> `replied`.

use std::sync::Arc;

use lanyard_proto::wire::{ServerMsg, UtteranceState};
use lanyard_store::Store;
use lanyard_stt::SpeechToText;
use tokio::sync::{Notify, Semaphore, mpsc};
use uuid::Uuid;

use crate::audio::AudioStore;
use crate::hub::Hub;
use crate::metrics::{self, SttDequeued, SttQueued, Transcribed};
use crate::now_ms;
use lanyard_respond::{ReplyRequest, Responder};
use lanyard_store::ReplyRecord;

/// Utterances waiting for processing. When full, whoever completes an
/// utterance waits: backpressure reaches the relay, which keeps its spool.
const QUEUE_DEPTH: usize = 1024;

#[derive(Clone)]
pub struct Pipeline {
    tx: mpsc::Sender<Uuid>,
}

struct Worker {
    store: Arc<dyn Store>,
    audio: Arc<AudioStore>,
    hub: Arc<Hub>,
    stt: Arc<dyn SpeechToText>,
    /// Shared with `POST /v1/audio/transcriptions`: one transcription at a
    /// time on the engine (see `AppState::stt_gate`).
    stt_gate: Arc<Semaphore>,
    responder: Arc<dyn Responder>,
    push_wake: Arc<Notify>,
}

impl Pipeline {
    pub fn spawn(
        store: Arc<dyn Store>,
        audio: Arc<AudioStore>,
        hub: Arc<Hub>,
        stt: Arc<dyn SpeechToText>,
        stt_gate: Arc<Semaphore>,
        responder: Arc<dyn Responder>,
        push_wake: Arc<Notify>,
    ) -> Self {
        let (tx, mut rx) = mpsc::channel(QUEUE_DEPTH);
        let worker = Worker { store, audio, hub, stt, stt_gate, responder, push_wake };
        tokio::spawn(async move {
            while let Some(id) = rx.recv().await {
                metrics::emit(SttDequeued);
                if let Err(e) = worker.process(id).await {
                    tracing::error!(utterance = %id, error = %e, "processing failed");
                    let _ = worker.store.set_failed(id, &e).await;
                }
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
            let (audio, device, frames) = (self.audio.clone(), utt.device_id, utt.frames);
            let stt = self.stt.clone();
            let turn = self.stt_gate.clone().acquire_owned().await.map_err(|e| format!("speech-to-text gate: {e}"))?;
            let transcript = tokio::task::spawn_blocking(move || -> Result<String, String> {
                let data = audio.read(device, id, frames).map_err(|e| format!("reading audio: {e}"))?;
                let pcm = lanyard_audio::decode_frames(codec, data.iter().map(Vec::as_slice))
                    .map_err(|e| format!("decoding audio: {e}"))?;
                stt.transcribe(&pcm).map(|t| t.text).map_err(|e| format!("transcribing: {e}"))
            })
            .await
            .map_err(|e| format!("transcription task: {e}"))??;
            drop(turn);
            let done_ms = now_ms();
            self.store.set_transcript(id, &transcript, done_ms).await.map_err(store_err)?;
            if let Some(end_ms) = utt.timings.received_end_ms {
                let ttfs = std::time::Duration::from_millis(done_ms.saturating_sub(end_ms).max(0) as u64);
                metrics::emit(Transcribed { ttfs });
            }
            self.audio.close(id);
            tracing::info!(%transcript, "transcribed");
            self.hub.send(utt.device_id, &ServerMsg::Final { utterance: id, text: transcript.clone() });
            utt.transcript = Some(transcript);
            utt.state = UtteranceState::Transcribed;
        }
        if utt.state == UtteranceState::Transcribed {
            let device = self.store.device(utt.device_id).await.map_err(store_err)?.ok_or("the utterance's device is gone")?;
            let request = ReplyRequest {
                utterance_id: id,
                device_id: device.id,
                device_name: device.name.clone(),
                transcript: utt.transcript.clone().unwrap_or_default(),
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
                tracing::info!("device has no push target; the reply goes down the socket only");
            }
            // An open stream gets the reply at once; the push still goes, with
            // the same collapse id, so a suspended app shows it once.
            self.hub.send(utt.device_id, &ServerMsg::Reply { utterance: id, title: reply.title, body: reply.body });
        }
        Ok(())
    }
}
