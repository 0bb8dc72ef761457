//! Reading what the SMTP sink received, through MailDev's REST API.

use std::time::Duration;

use serde_json::Value;

/// Every message MailDev holds that is addressed to `to`.
pub async fn messages_to(maildev_url: &str, to: &str) -> anyhow::Result<Vec<Value>> {
    let all: Vec<Value> = reqwest::get(format!("{maildev_url}/api/email")).await?.error_for_status()?.json().await?;
    Ok(all
        .into_iter()
        .filter(|m| {
            m["to"].as_array().is_some_and(|list| {
                list.iter().any(|r| r["address"].as_str().is_some_and(|a| a.eq_ignore_ascii_case(to)))
            })
        })
        .collect())
}

/// Waits (up to `deadline`) until MailDev holds at least `count` messages to `to`.
pub async fn wait_for(maildev_url: &str, to: &str, count: usize, deadline: Duration) -> anyhow::Result<Vec<Value>> {
    crate::eventually(&format!("{count} email(s) to {to}"), deadline, || async {
        let found = messages_to(maildev_url, to).await?;
        Ok((found.len() >= count).then_some(found))
    })
    .await
}
