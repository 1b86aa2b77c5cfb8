//! [`Router`]: one [`PushProvider`] that hands each notification to the
//! provider of its platform.
//!
//! A server configures APNs, FCM, both or neither. A notification for a
//! platform with no provider goes to the fallback when there is one (the
//! [`FileSink`](crate::FileSink) in development), and is otherwise
//! [`PushError::Undeliverable`] with a message naming the settings to fill:
//! a device registered for a platform the server cannot reach will never get
//! its notification, and retrying would only fill the log.

use std::sync::Arc;

use async_trait::async_trait;

use crate::{ApnsProvider, FcmProvider, Notification, Platform, PushError, PushProvider};

/// Routes notifications by [`Platform`]. Build it with [`Router::new`] from
/// the configured providers, or with [`Router::empty`] and the `with_*`
/// methods for any providers.
#[derive(Clone, Default)]
pub struct Router {
    apns: Option<Arc<dyn PushProvider>>,
    fcm: Option<Arc<dyn PushProvider>>,
    fallback: Option<Arc<dyn PushProvider>>,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router")
            .field("apns", &self.apns.as_ref().map(|p| p.name()))
            .field("fcm", &self.fcm.as_ref().map(|p| p.name()))
            .field("fallback", &self.fallback.as_ref().map(|p| p.name()))
            .finish()
    }
}

impl Router {
    /// A router for the providers a server configured; a platform given
    /// `None` is undeliverable unless a fallback is added.
    pub fn new(apns: Option<ApnsProvider>, fcm: Option<FcmProvider>) -> Self {
        Self {
            apns: apns.map(|p| Arc::new(p) as Arc<dyn PushProvider>),
            fcm: fcm.map(|p| Arc::new(p) as Arc<dyn PushProvider>),
            fallback: None,
        }
    }

    /// A router with no providers: every notification is undeliverable until
    /// one is added.
    pub fn empty() -> Self {
        Self::default()
    }

    /// Sends APNs notifications with `p` (normally an
    /// [`ApnsProvider`](crate::ApnsProvider)).
    pub fn with_apns(mut self, p: Arc<dyn PushProvider>) -> Self {
        self.apns = Some(p);
        self
    }

    /// Sends FCM notifications with `p` (normally an
    /// [`FcmProvider`](crate::FcmProvider)).
    pub fn with_fcm(mut self, p: Arc<dyn PushProvider>) -> Self {
        self.fcm = Some(p);
        self
    }

    /// Sends notifications of platforms with no provider to `p`.
    pub fn with_fallback(mut self, p: Arc<dyn PushProvider>) -> Self {
        self.fallback = Some(p);
        self
    }

    /// The provider that `platform`'s notifications go to, if any.
    pub fn provider_for(&self, platform: Platform) -> Option<&Arc<dyn PushProvider>> {
        let own = match platform {
            Platform::Apns => self.apns.as_ref(),
            Platform::Fcm => self.fcm.as_ref(),
        };
        own.or(self.fallback.as_ref())
    }
}

#[async_trait]
impl PushProvider for Router {
    async fn send(&self, n: &Notification) -> Result<(), PushError> {
        match self.provider_for(n.platform) {
            Some(p) => p.send(n).await,
            None => Err(PushError::undeliverable(match n.platform {
                Platform::Apns => {
                    "this server has no APNs provider configured; fill in the APNs settings (ApnsConfig: key_path, key_id, team_id, topic; see the lanyard-push crate doc)"
                }
                Platform::Fcm => {
                    "this server has no FCM provider configured; fill in the FCM settings (FcmConfig: service_account_path; see the lanyard-push crate doc)"
                }
            })),
        }
    }

    fn name(&self) -> &'static str {
        "router"
    }
}
