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
use tokio::sync::{Notify, mpsc};
use uuid::Uuid;

use crate::audio::AudioStore;
use crate::hub::Hub;
use crate::now_ms;
use crate::responder::Responder;

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
    responder: Arc<dyn Responder>,
    push_wake: Arc<Notify>,
}

impl Pipeline {
    pub fn spawn(
        store: Arc<dyn Store>,
        audio: Arc<AudioStore>,
        hub: Arc<Hub>,
        stt: Arc<dyn SpeechToText>,
        responder: Arc<dyn Responder>,
        push_wake: Arc<Notify>,
    ) -> Self {
        let (tx, mut rx) = mpsc::channel(QUEUE_DEPTH);
        let worker = Worker { store, audio, hub, stt, responder, push_wake };
        tokio::spawn(async move {
            while let Some(id) = rx.recv().await {
                if let Err(e) = worker.process(id).await {
                    tracing::error!(utterance = %id, error = %e, "processing failed");
                    let _ = worker.store.set_failed(id, &e).await;
                }
            }
        });
        Self { tx }
    }

    pub async fn enqueue(&self, id: Uuid) {
        if self.tx.send(id).await.is_err() {
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
            self.store.mark_stt_started(id, now_ms()).await.map_err(store_err)?;
            let (audio, device, frames, codec) = (self.audio.clone(), utt.device_id, utt.frames, utt.codec);
            let stt = self.stt.clone();
            let transcript = tokio::task::spawn_blocking(move || -> Result<String, String> {
                let data = audio.read(device, id, frames).map_err(|e| format!("reading audio: {e}"))?;
                let pcm = lanyard_audio::decode_frames(codec, data.iter().map(Vec::as_slice))
                    .map_err(|e| format!("decoding audio: {e}"))?;
                stt.transcribe(&pcm).map(|t| t.text).map_err(|e| format!("transcribing: {e}"))
            })
            .await
            .map_err(|e| format!("transcription task: {e}"))??;
            self.store.set_transcript(id, &transcript, now_ms()).await.map_err(store_err)?;
            self.audio.close(id);
            tracing::info!(%transcript, "transcribed");
            self.hub.send(utt.device_id, &ServerMsg::Final { utterance: id, text: transcript.clone() });
            utt.transcript = Some(transcript);
            utt.state = UtteranceState::Transcribed;
        }
        if utt.state == UtteranceState::Transcribed {
            let reply = self.responder.reply(utt.transcript.as_deref().unwrap_or_default());
            let device = self.store.device(utt.device_id).await.map_err(store_err)?;
            let target = device.and_then(|d| d.push);
            self.store.set_reply(id, &reply.title, &reply.body, target.as_ref(), now_ms()).await.map_err(store_err)?;
            if target.is_some() {
                self.push_wake.notify_one();
            } else {
                tracing::info!("device has no push target; the reply goes down the socket only");
            }
            self.hub.send(utt.device_id, &ServerMsg::Reply { utterance: id, title: reply.title, body: reply.body });
        }
        Ok(())
    }
}
