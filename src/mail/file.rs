//! `file://DIR`: one .eml file per message, for development and `make run`.

use std::path::PathBuf;

use async_trait::async_trait;
use lettre::{AsyncFileTransport, AsyncTransport, Message, Tokio1Executor};

use super::{MailError, Mailer};

/// Writes each message to `<dir>/<id>.eml`.
pub struct FileMailer {
    dir: PathBuf,
    transport: AsyncFileTransport<Tokio1Executor>,
}

impl FileMailer {
    /// A mailer writing into `dir` (created on first send).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        let dir = dir.into();
        Self {
            transport: AsyncFileTransport::new(&dir),
            dir,
        }
    }
}

#[async_trait]
impl Mailer for FileMailer {
    async fn send(&self, message: Message) -> Result<(), MailError> {
        tokio::fs::create_dir_all(&self.dir)
            .await
            .map_err(|e| MailError::Transport(format!("creating {}: {e}", self.dir.display())))?;
        self.transport
            .send(message)
            .await
            .map(|_| ())
            .map_err(|e| MailError::Transport(e.to_string()))
    }
}
