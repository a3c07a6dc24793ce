//! Sending verification mails over SMTP (`[email]`), with lettre on rustls (ring, the system's
//! roots). STARTTLS is used whenever the server offers it, and required with
//! `require_transport_security`; the SMTP login, when configured, is sent only after STARTTLS
//! succeeded when it is required (lettre refuses plaintext credentials otherwise).

use lettre::message::Mailbox;
use lettre::message::header::ContentType;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use crate::config::EmailConfig;
use crate::error::{Error, Result};

/// How long one delivery to the SMTP server may take.
const SEND_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// The configured SMTP transport and sender.
pub struct Mailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
}

impl Mailer {
    /// The mailer of `[email]`, or `None` when email is off (no `smtp_host`).
    pub fn from_config(config: &EmailConfig) -> anyhow::Result<Option<Self>> {
        let Some(host) = &config.smtp_host else { return Ok(None) };
        let from: Mailbox = config
            .notif_from
            .as_deref()
            .ok_or_else(|| anyhow::anyhow!("email.notif_from is needed"))?
            .parse()
            .map_err(|e| anyhow::anyhow!("email.notif_from: {e}"))?;
        let params = TlsParameters::new(host.clone())?;
        let tls = if config.require_transport_security { Tls::Required(params) } else { Tls::Opportunistic(params) };
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host.as_str())
            .port(config.smtp_port)
            .tls(tls)
            .timeout(Some(SEND_TIMEOUT));
        if let (Some(user), Some(pass)) = (&config.smtp_user, &config.smtp_pass) {
            builder = builder.credentials(Credentials::new(user.clone(), pass.clone()));
        }
        Ok(Some(Self { transport: builder.build(), from }))
    }

    /// Sends a plain-text mail; a failure of the SMTP server is 500 (logged with its cause).
    pub async fn send(&self, to: &str, subject: &str, body: String) -> Result<()> {
        let to: Mailbox = to.parse().map_err(|_| Error::invalid_param("Invalid email address"))?;
        let message = Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(subject)
            .header(ContentType::TEXT_PLAIN)
            .body(body)
            .map_err(Error::internal)?;
        self.transport.send(message).await.map_err(|e| Error::internal(format!("SMTP: {e}")))?;
        Ok(())
    }
}
