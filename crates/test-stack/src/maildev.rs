//! Reading what the SMTP sink received, through MailDev's REST API.

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
