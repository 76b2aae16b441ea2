//! The transparency report: what the gateway holds and what it did in one month, in a form a
//! property can print or post for its residents (HTML, Chinese by default, or English) and a
//! platform can read (JSON, schema in `host/schema/report.json`).
//!
//! Every number is counted from the gateway's own stores (event log, template store, audit
//! trail, subject directory); none is typed in. The report carries counts and pseudonymous
//! ids only: no template, photo, PIN or card number can reach it, because none of the
//! tables it reads holds one in a form it selects.

use crate::audit::{AuditLog, Verified};
use crate::config::SiteConfig;
use rusqlite::{Connection, OpenFlags};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;
use thiserror::Error;

/// The number of people whose face data obliges the holder to file with the authorities.
pub const FILING_THRESHOLD: u64 = 100_000;
/// From this many face subjects on, the report warns that the threshold is near.
pub const FILING_WARNING: u64 = 80_000;

/// A failure to gather the report.
#[derive(Debug, Error)]
pub enum ReportError {
    #[error("--period `{0}`: expected a month as YYYY-MM (2000-01..=2200-12)")]
    Period(String),
    #[error("{what} {path}: {source}")]
    Db { what: &'static str, path: String, source: rusqlite::Error },
    #[error("audit log: {0}")]
    Audit(#[from] crate::audit::AuditError),
    #[error("report could not be encoded: {0}")]
    Encode(#[from] serde_json::Error),
}

/// One month of one gateway, counted.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Report {
    /// Always `gate-report/1`.
    pub format: String,
    pub site: String,
    pub gateway: String,
    /// The month, `YYYY-MM`, in the site's local time.
    pub period: String,
    /// Start (inclusive) and end (exclusive) of the period, Unix ms.
    pub from_ms: i64,
    pub to_ms: i64,
    pub generated_at_ms: i64,
    pub residents: Residents,
    /// Granted entries (direction entry) by credential kind: face is one option among several.
    pub entries_by_credential: BTreeMap<String, u64>,
    /// Denied attempts by credential kind.
    pub denied_by_credential: BTreeMap<String, u64>,
    pub face: FaceData,
    pub retention: Retention,
    pub audit: AuditStatus,
    pub plugins: PluginIncidents,
    /// Why the gateway can state that no biometric data left it.
    pub biometric_statement: Vec<String>,
}

/// Who can get in, and how many chose face.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Residents {
    /// Residents in the subject directory.
    pub total: u64,
    /// Residents with a face template on this gateway.
    pub with_face: u64,
    /// Residents who enter without face (card, PIN, phone, guard).
    pub without_face: u64,
}

/// Face data held and how it changed in the period.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FaceData {
    /// Whether the on-device matcher is configured at all.
    pub configured: bool,
    /// Distinct subjects with a template now (pseudonymous; the templates never leave the device).
    pub subjects_held: u64,
    pub consents_given: u64,
    pub consents_withdrawn: u64,
    /// Templates erased in the period, by why (withdrawal, retention, directory).
    pub erased: BTreeMap<String, u64>,
    /// The legal filing threshold, and whether this gateway alone is near it.
    pub filing_threshold: u64,
    pub filing_warning: bool,
    /// The subjects with a template, each as `subject:` and 24 hex digits of an HMAC under
    /// the site's reference key (`[fleet] ref_key`): the same person gives the same reference
    /// on every gateway of the site, so `gate fleet report` counts people, not templates,
    /// while nobody without the key learns who. Empty without a reference key.
    #[serde(default)]
    pub subject_refs: Vec<String>,
}

/// How long the gateway keeps what it keeps.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Retention {
    /// Access events, in days; 0 = kept until removed by hand.
    pub events_days: u64,
    /// Alarms, in days.
    pub alarms_days: u64,
    /// Audit entries, in days.
    pub audit_days: u64,
    /// Face templates not matched for this many days are erased; 0 = never by age.
    pub face_unused_days: u64,
    /// Templates of subjects no longer in the directory are erased at start.
    pub face_erase_orphans: bool,
    /// Events older than the bound that are still in the log (should be 0 in service).
    pub events_past_bound: u64,
}

/// The audit trail's state when the report was made.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AuditStatus {
    pub entries: u64,
    /// Whether the hash chain and every checkpoint verified.
    pub whole: bool,
    /// What was wrong, when not whole.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
    /// The newest signed checkpoint: entries it covers and when it was signed (Unix ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_checkpoint: Option<(u64, i64)>,
    /// Audit entries in the period, by action.
    pub actions: BTreeMap<String, u64>,
}

/// Plugin trouble in the period, and how often the host's fallback decided instead.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PluginIncidents {
    pub failures: u64,
    pub quarantines: u64,
    pub fallback_decisions: u64,
}

/// The month `YYYY-MM` as `[from, to)` in Unix ms, in the site's local time.
pub fn month_bounds(period: &str, offset_minutes: i32) -> Result<(i64, i64), ReportError> {
    let bad = || ReportError::Period(crate::plugin::text::sanitize(period, 32));
    let (y, m) = period.split_once('-').ok_or_else(bad)?;
    let (y, m): (i32, u8) = (y.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
    if !(2000..=2200).contains(&y) || y.to_string().len() != 4 || period.len() != 7 {
        return Err(bad());
    }
    let month = time::Month::try_from(m).map_err(|_| bad())?;
    let start = |y: i32, month: time::Month| -> Result<i64, ReportError> {
        let d = time::Date::from_calendar_date(y, month, 1).map_err(|_| bad())?;
        let t = d.midnight().assume_utc().unix_timestamp();
        Ok((t - i64::from(offset_minutes) * 60) * 1_000)
    };
    let (ny, nm) = if month == time::Month::December { (y + 1, time::Month::January) } else { (y, month.next()) };
    Ok((start(y, month)?, start(ny, nm)?))
}

/// Where the report's numbers come from.
pub struct Sources<'a> {
    pub cfg: &'a SiteConfig,
    pub event_log: &'a Path,
    pub audit: &'a Path,
    /// The site's reference key, for the subject references a site report counts with.
    pub ref_key: Option<&'a crate::credentials::RefKey>,
}

fn db_err<'a>(what: &'static str, path: &'a Path) -> impl Fn(rusqlite::Error) -> ReportError + 'a {
    move |source| ReportError::Db { what, path: path.display().to_string(), source }
}

fn open_ro(what: &'static str, path: &Path) -> Result<Connection, ReportError> {
    Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX).map_err(|source| ReportError::Db { what, path: path.display().to_string(), source })
}

/// Counts the month `period` from the gateway's stores.
pub fn gather(src: &Sources, period: &str, now_ms: i64) -> Result<Report, ReportError> {
    let cfg = src.cfg;
    let offset = crate::clock::parse_offset(&cfg.site.utc_offset).unwrap_or(0);
    let (from_ms, to_ms) = month_bounds(period, offset)?;

    // Decisions and plugin health from the event log.
    let mut entries = BTreeMap::new();
    let mut denied = BTreeMap::new();
    let mut plugins = PluginIncidents { failures: 0, quarantines: 0, fallback_decisions: 0 };
    let mut events_past_bound = 0;
    if src.event_log.is_file() {
        let conn = open_ro("event log", src.event_log)?;
        let e = db_err("event log", src.event_log);
        let mut st = conn
            .prepare(
                "SELECT json_extract(body, '$.credential'), json_extract(body, '$.outcome'), json_extract(body, '$.direction'), json_extract(body, '$.by')
                 FROM events WHERE kind = 'decision' AND at_ms >= ?1 AND at_ms < ?2",
            )
            .map_err(&e)?;
        let rows =
            st.query_map([from_ms, to_ms], |r| Ok((r.get::<_, Option<String>>(0)?, r.get::<_, Option<String>>(1)?, r.get::<_, Option<String>>(2)?, r.get::<_, Option<String>>(3)?))).map_err(&e)?;
        for row in rows {
            let (cred, outcome, direction, by) = row.map_err(&e)?;
            let cred = cred.unwrap_or_else(|| "unknown".into());
            if by.as_deref().is_some_and(|b| b.starts_with("fallback")) {
                plugins.fallback_decisions += 1;
            }
            match (outcome.as_deref(), direction.as_deref()) {
                (Some("grant"), Some("entry") | None) => *entries.entry(cred).or_insert(0) += 1,
                (Some("deny"), _) => *denied.entry(cred).or_insert(0) += 1,
                _ => {}
            }
        }
        let mut st = conn.prepare("SELECT json_extract(body, '$.status'), COUNT(*) FROM events WHERE kind = 'plugin' AND at_ms >= ?1 AND at_ms < ?2 GROUP BY 1").map_err(&e)?;
        let rows = st.query_map([from_ms, to_ms], |r| Ok((r.get::<_, Option<String>>(0)?, r.get::<_, i64>(1)?))).map_err(&e)?;
        for row in rows {
            match row.map_err(&e)? {
                (Some(s), n) if s == "failed" => plugins.failures += n.max(0) as u64,
                (Some(s), n) if s == "quarantined" => plugins.quarantines += n.max(0) as u64,
                _ => {}
            }
        }
        if cfg.retention.events_days > 0 {
            let bound = now_ms.saturating_sub(days_ms(cfg.retention.events_days));
            let n: i64 = conn.query_row("SELECT COUNT(*) FROM events WHERE at_ms < ?1 AND kind <> 'alarm'", [bound], |r| r.get(0)).map_err(&e)?;
            events_past_bound = n.max(0) as u64;
        }
    }

    // Face data: consents and templates, counted without reading a template.
    let mut face = FaceData {
        configured: cfg.face.configured(),
        subjects_held: 0,
        consents_given: 0,
        consents_withdrawn: 0,
        erased: BTreeMap::new(),
        filing_threshold: FILING_THRESHOLD,
        filing_warning: false,
        subject_refs: Vec::new(),
    };
    let mut with_face = 0;
    let residents = resident_ids(cfg)?;
    let residents: Vec<&str> = residents.iter().map(String::as_str).collect();
    if let Some(db) = cfg.face.db.as_deref().filter(|p| p.is_file()) {
        let conn = open_ro("template store", db)?;
        let e = db_err("template store", db);
        let held: Vec<String> = conn.prepare("SELECT subject FROM template").and_then(|mut st| st.query_map([], |r| r.get(0))?.collect()).map_err(&e)?;
        face.subjects_held = held.len() as u64;
        if let Some(key) = src.ref_key {
            face.subject_refs = held.iter().map(|s| crate::credentials::keyed_subject_ref(key, s)).collect();
            face.subject_refs.sort();
        }
        let held: std::collections::HashSet<&str> = held.iter().map(String::as_str).collect();
        with_face = residents.iter().filter(|r| held.contains(**r)).count() as u64;
        face.consents_given = conn.query_row("SELECT COUNT(*) FROM consent WHERE given_at_ms >= ?1 AND given_at_ms < ?2", [from_ms, to_ms], |r| r.get::<_, i64>(0)).map_err(&e)?.max(0) as u64;
        face.consents_withdrawn =
            conn.query_row("SELECT COUNT(*) FROM consent WHERE withdrawn_at_ms >= ?1 AND withdrawn_at_ms < ?2", [from_ms, to_ms], |r| r.get::<_, i64>(0)).map_err(&e)?.max(0) as u64;
    }
    face.filing_warning = face.subjects_held >= FILING_WARNING;

    // The audit trail: its state, and what it says happened in the period.
    let mut audit = AuditStatus { entries: 0, whole: true, problem: None, last_checkpoint: None, actions: BTreeMap::new() };
    if src.audit.is_file() {
        let log = AuditLog::open(src.audit)?;
        match log.verify(None, None)? {
            Ok(Verified { entries, last_checkpoint, .. }) => {
                audit.entries = entries.max(0) as u64;
                audit.last_checkpoint = last_checkpoint.map(|c| (c.seq.max(0) as u64, c.at_ms));
            }
            Err(t) => {
                audit.entries = log.head()?.0.max(0) as u64;
                audit.whole = false;
                audit.problem = Some(t.to_string());
            }
        }
        for (action, n) in log.count_by_action(from_ms, to_ms)? {
            audit.actions.insert(action, n.max(0) as u64);
        }
        for e in log.entries(1)?.into_iter().filter(|e| e.at_ms >= from_ms && e.at_ms < to_ms && e.action == "template-erased") {
            let why = serde_json::from_str::<serde_json::Value>(&e.detail).ok().and_then(|v| v.get("why").and_then(|w| w.as_str()).map(str::to_string)).unwrap_or_else(|| "withdrawal".into());
            *face.erased.entry(why).or_insert(0) += 1;
        }
    }

    let r = &cfg.retention;
    Ok(Report {
        format: "gate-report/1".into(),
        site: cfg.site.id.clone(),
        gateway: cfg.site.gateway.clone(),
        period: period.to_string(),
        from_ms,
        to_ms,
        generated_at_ms: now_ms,
        residents: Residents { total: residents.len() as u64, with_face, without_face: (residents.len() as u64).saturating_sub(with_face) },
        entries_by_credential: entries,
        denied_by_credential: denied,
        face,
        retention: Retention {
            events_days: r.events_days,
            alarms_days: r.alarms_days,
            audit_days: r.audit_days,
            face_unused_days: u64::from(cfg.face.unused_days),
            face_erase_orphans: cfg.face.erase_orphans,
            events_past_bound,
        },
        audit,
        plugins,
        biometric_statement: vec![
            "plugin-contract: the plugin interface carries match results (pseudonymous id, score band, liveness), never images or templates; a test walks the contract and fails on any".into(),
            "outbound-schemas: every MQTT message the gateway sends has a published schema with no field for face, image, template, PIN or card data; a test walks them (this report, also published monthly, carries counts and keyed subject references only)".into(),
            "templates-encrypted-on-device: templates are stored encrypted under a device key kept outside the database and are never exported by any command".into(),
            "this-report: counts and pseudonymous ids only".into(),
        ],
    })
}

/// The residents' ids: from the site's subjects file, or from the directory database a
/// large site imported (`gate directory import`), read without loading its credentials.
fn resident_ids(cfg: &SiteConfig) -> Result<Vec<String>, ReportError> {
    let from_db = match (&cfg.site.subjects, &cfg.site.state_dir) {
        (None, Some(state)) => Some(crate::directory::db_path(state)).filter(|p| p.is_file()),
        _ => None,
    };
    let Some(db) = from_db else {
        return Ok(cfg.subjects.iter().filter(|s| s.role == crate::event::Role::Resident).map(|s| s.id.clone()).collect());
    };
    let conn = open_ro("subject directory", &db)?;
    let e = db_err("subject directory", &db);
    let mut st = conn.prepare("SELECT id FROM subjects WHERE role = 'resident'").map_err(&e)?;
    let ids = st.query_map([], |r| r.get(0)).map_err(&e)?.collect::<Result<Vec<String>, _>>().map_err(&e)?;
    Ok(ids)
}

fn days_ms(days: u64) -> i64 {
    i64::try_from(days).unwrap_or(i64::MAX / 86_400_000).saturating_mul(86_400_000)
}

/// Which language the page is written in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lang {
    Zh,
    En,
}

struct Words {
    title: &'static str,
    intro: &'static str,
    residents: &'static str,
    total: &'static str,
    with_face: &'static str,
    without_face: &'static str,
    entries: &'static str,
    entries_note: &'static str,
    denied: &'static str,
    face: &'static str,
    held: &'static str,
    given: &'static str,
    withdrawn: &'static str,
    erased: &'static str,
    filing: &'static str,
    filing_near: &'static str,
    filing_far: &'static str,
    left: &'static str,
    retention: &'static str,
    events: &'static str,
    alarms: &'static str,
    audit_entries: &'static str,
    days: &'static str,
    never: &'static str,
    past_bound: &'static str,
    unused: &'static str,
    orphans: &'static str,
    yes: &'static str,
    no: &'static str,
    audit: &'static str,
    whole: &'static str,
    broken: &'static str,
    checkpoint: &'static str,
    no_checkpoint: &'static str,
    plugins: &'static str,
    failures: &'static str,
    quarantines: &'static str,
    fallback: &'static str,
    generated: &'static str,
    none: &'static str,
}

const ZH: Words = Words {
    title: "门禁数据管理情况公示",
    intro: "本报告由小区门禁网关根据其自身记录自动统计生成，公示本月门禁数据的收集、使用、保存与删除情况。人脸识别只是进门方式之一：门卡、密码、手机NFC和保安放行始终可用。",
    residents: "住户与通行方式",
    total: "住户总数",
    with_face: "自愿登记人脸的住户",
    without_face: "未使用人脸的住户",
    entries: "本月按通行方式统计的进门次数",
    entries_note: "每种方式的放行次数",
    denied: "本月被拒绝的尝试",
    face: "人脸数据",
    held: "设备上保存的人脸模板（人数）",
    given: "本月新签署的单独同意",
    withdrawn: "本月撤回的同意",
    erased: "本月删除的人脸模板",
    filing: "备案门槛（10万人）",
    filing_near: "接近备案门槛，请准备向主管部门备案",
    filing_far: "远低于备案门槛",
    left: "人脸数据未离开本设备",
    retention: "保存期限",
    events: "通行记录",
    alarms: "报警记录",
    audit_entries: "审计记录",
    days: "天",
    never: "不按时间删除",
    past_bound: "超过保存期限仍在的记录",
    unused: "长期未使用的人脸模板自动删除",
    orphans: "已迁出住户的人脸模板自动删除",
    yes: "是",
    no: "否",
    audit: "审计日志",
    whole: "哈希链完整，未被篡改",
    broken: "审计日志校验失败",
    checkpoint: "最近一次设备签名的检查点",
    no_checkpoint: "尚无签名检查点",
    plugins: "策略插件异常",
    failures: "插件故障次数",
    quarantines: "插件被隔离次数",
    fallback: "由主机后备规则决定的通行",
    generated: "生成时间",
    none: "无",
};

const EN: Words = Words {
    title: "How the gate's access data is managed",
    intro: "This report is counted by the community's gate gateway from its own records. It shows how access data was collected, used, kept and erased this month. Face recognition is one way in among several: card, PIN, phone NFC and the guard are always available.",
    residents: "Residents and how they enter",
    total: "Residents",
    with_face: "Residents who chose to enrol their face",
    without_face: "Residents who do not use face",
    entries: "Entries this month by credential",
    entries_note: "granted entries per credential kind",
    denied: "Denied attempts this month",
    face: "Face data",
    held: "People with a face template on the device",
    given: "Separate consents given this month",
    withdrawn: "Consents withdrawn this month",
    erased: "Face templates erased this month",
    filing: "Filing threshold (100,000 people)",
    filing_near: "Near the filing threshold: prepare to file with the authorities",
    filing_far: "Far below the filing threshold",
    left: "No face data left this device",
    retention: "Retention",
    events: "Access events",
    alarms: "Alarms",
    audit_entries: "Audit entries",
    days: "days",
    never: "not erased by age",
    past_bound: "Records still held past their bound",
    unused: "Face templates unused this long are erased",
    orphans: "Templates of people no longer in the directory are erased",
    yes: "yes",
    no: "no",
    audit: "Audit trail",
    whole: "Hash chain whole: not tampered with",
    broken: "Audit trail check FAILED",
    checkpoint: "Newest checkpoint signed by the device",
    no_checkpoint: "No signed checkpoint yet",
    plugins: "Policy plugin incidents",
    failures: "Plugin failures",
    quarantines: "Plugin quarantines",
    fallback: "Entries decided by the host's fallback",
    generated: "Generated",
    none: "none",
};

fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in crate::plugin::text::sanitize(s, 400).chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn kind_label(kind: &str, lang: Lang) -> String {
    let zh = match kind {
        "face" => "人脸",
        "card" => "门卡",
        "pin" => "密码",
        "nfc" => "手机NFC",
        "qr" => "访客二维码",
        "plate" => "车牌",
        "guard" | "guard-release" => "保安放行",
        "intercom" => "对讲",
        other => other,
    };
    esc(if lang == Lang::Zh { zh } else { kind })
}

fn iso(ms: i64, offset_minutes: i32) -> String {
    let off = time::UtcOffset::from_whole_seconds(offset_minutes * 60).unwrap_or(time::UtcOffset::UTC);
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .map(|t| t.to_offset(off))
        .ok()
        .map(|t| format!("{:04}-{:02}-{:02} {:02}:{:02}", t.year(), u8::from(t.month()), t.day(), t.hour(), t.minute()))
        .unwrap_or_else(|| ms.to_string())
}

/// One ground of the "no biometric data left the device" statement, in the page's language.
fn statement(s: &str, lang: Lang) -> String {
    let code = s.split(':').next().unwrap_or(s);
    let zh = match code {
        "plugin-contract" => "插件接口只传递比对结果（化名编号、相似度等级、活体结论），从不传递图像或模板；测试会逐项检查接口并在出现此类字段时失败",
        "outbound-schemas" => "网关发出的每一条MQTT消息都有公开的格式定义，其中没有人脸、图像、模板、密码或卡号字段；测试会逐项检查",
        "templates-encrypted-on-device" => "人脸模板加密保存在本设备上，密钥与数据库分开保存，没有任何命令可以导出模板",
        "this-report" => "本报告只包含统计数字和化名编号",
        _ => return s.to_string(),
    };
    match lang {
        Lang::Zh => zh.to_string(),
        Lang::En => s.split_once(": ").map(|(_, t)| t.to_string()).unwrap_or_else(|| s.to_string()),
    }
}

/// A horizontal bar chart as inline SVG: one bar per credential kind.
fn bar_chart(data: &BTreeMap<String, u64>, lang: Lang) -> String {
    let max = data.values().copied().max().unwrap_or(0).max(1);
    let row = 28;
    let height = row * data.len().max(1) + 10;
    let mut svg = format!(r#"<svg xmlns="http://www.w3.org/2000/svg" width="560" height="{height}" role="img" aria-label="entries by credential">"#);
    if data.is_empty() {
        svg.push_str(r#"<text x="0" y="20" font-size="14">—</text>"#);
    }
    for (i, (kind, n)) in data.iter().enumerate() {
        let y = i * row + 4;
        let w = (*n as f64 / max as f64 * 360.0).round().max(1.0);
        let colour = if kind == "face" { "#8a6d3b" } else { "#2e6da4" };
        svg.push_str(&format!(
            r#"<text x="0" y="{}" font-size="14">{}</text><rect x="110" y="{y}" width="{w}" height="20" fill="{colour}"/><text x="{}" y="{}" font-size="14">{n}</text>"#,
            y + 15,
            kind_label(kind, lang),
            110.0 + w + 6.0,
            y + 15
        ));
    }
    svg.push_str("</svg>");
    svg
}

/// The report as a self-contained HTML page (no scripts, no outside resources).
pub fn html(r: &Report, lang: Lang, offset_minutes: i32) -> String {
    let w = if lang == Lang::Zh { &ZH } else { &EN };
    let kv = |k: &str, v: String| format!("<tr><th>{}</th><td>{v}</td></tr>", esc(k));
    let days = |d: u64| if d == 0 { esc(w.never) } else { format!("{d} {}", esc(w.days)) };
    let list = |m: &BTreeMap<String, u64>| {
        if m.is_empty() {
            esc(w.none)
        } else {
            m.iter().map(|(k, n)| format!("{} {n}", kind_label(k, lang))).collect::<Vec<_>>().join("，")
        }
    };
    let mut b = String::new();
    b.push_str(&format!(
        "<!DOCTYPE html>\n<html lang=\"{}\"><head><meta charset=\"utf-8\"><title>{} {}</title>\n<style>body{{font-family:\"Noto Sans CJK SC\",\"WenQuanYi Micro Hei\",sans-serif;max-width:760px;margin:2em auto;color:#222}}h1{{font-size:1.6em}}h2{{border-bottom:1px solid #ccc;margin-top:1.6em}}table{{border-collapse:collapse}}th,td{{text-align:left;padding:4px 12px 4px 0}}th{{font-weight:normal;color:#555}}.ok{{color:#2a7a2a}}.bad{{color:#b00}}</style></head><body>\n",
        if lang == Lang::Zh { "zh-CN" } else { "en" },
        esc(w.title),
        esc(&r.period)
    ));
    b.push_str(&format!("<h1>{} · {}</h1>\n<p>{} / {} · {}</p>\n<p>{}</p>\n", esc(w.title), esc(&r.period), esc(&r.site), esc(&r.gateway), esc(&iso(r.from_ms, offset_minutes)), esc(w.intro)));
    b.push_str(&format!("<h2>{}</h2><table id=\"residents\">", esc(w.residents)));
    b.push_str(&kv(w.total, r.residents.total.to_string()));
    b.push_str(&kv(w.with_face, r.residents.with_face.to_string()));
    b.push_str(&kv(w.without_face, r.residents.without_face.to_string()));
    b.push_str("</table>\n");
    b.push_str(&format!("<h2>{}</h2><p>{}</p><figure id=\"entries\">{}</figure>\n", esc(w.entries), esc(w.entries_note), bar_chart(&r.entries_by_credential, lang)));
    b.push_str(&format!("<table>{}</table>\n", kv(w.denied, list(&r.denied_by_credential))));
    b.push_str(&format!("<h2>{}</h2><table id=\"face\">", esc(w.face)));
    b.push_str(&kv(w.held, r.face.subjects_held.to_string()));
    b.push_str(&kv(w.given, r.face.consents_given.to_string()));
    b.push_str(&kv(w.withdrawn, r.face.consents_withdrawn.to_string()));
    b.push_str(&kv(w.erased, list(&r.face.erased)));
    b.push_str(&kv(w.filing, format!("{} / {} · {}", r.face.subjects_held, r.face.filing_threshold, esc(if r.face.filing_warning { w.filing_near } else { w.filing_far }))));
    b.push_str(&kv(w.left, r.biometric_statement.iter().map(|s| esc(&statement(s, lang))).collect::<Vec<_>>().join("<br>")));
    b.push_str("</table>\n");
    b.push_str(&format!("<h2>{}</h2><table id=\"retention\">", esc(w.retention)));
    b.push_str(&kv(w.events, days(r.retention.events_days)));
    b.push_str(&kv(w.alarms, days(r.retention.alarms_days)));
    b.push_str(&kv(w.audit_entries, days(r.retention.audit_days)));
    b.push_str(&kv(w.unused, days(r.retention.face_unused_days)));
    b.push_str(&kv(w.orphans, esc(if r.retention.face_erase_orphans { w.yes } else { w.no })));
    b.push_str(&kv(w.past_bound, r.retention.events_past_bound.to_string()));
    b.push_str("</table>\n");
    b.push_str(&format!("<h2>{}</h2><table id=\"audit\">", esc(w.audit)));
    b.push_str(&kv(w.audit_entries, r.audit.entries.to_string()));
    let state =
        if r.audit.whole { format!("<span class=\"ok\">{}</span>", esc(w.whole)) } else { format!("<span class=\"bad\">{}: {}</span>", esc(w.broken), esc(r.audit.problem.as_deref().unwrap_or(""))) };
    b.push_str(&kv("", state));
    b.push_str(&kv(w.checkpoint, r.audit.last_checkpoint.map(|(seq, at)| format!("#{seq} · {}", esc(&iso(at, offset_minutes)))).unwrap_or_else(|| esc(w.no_checkpoint))));
    b.push_str(&kv("", list(&r.audit.actions)));
    b.push_str("</table>\n");
    b.push_str(&format!("<h2>{}</h2><table id=\"plugins\">", esc(w.plugins)));
    b.push_str(&kv(w.failures, r.plugins.failures.to_string()));
    b.push_str(&kv(w.quarantines, r.plugins.quarantines.to_string()));
    b.push_str(&kv(w.fallback, r.plugins.fallback_decisions.to_string()));
    b.push_str("</table>\n");
    b.push_str(&format!("<p><small>{} {}</small></p>\n</body></html>\n", esc(w.generated), esc(&iso(r.generated_at_ms, offset_minutes))));
    b
}

/// A site's month, combined from its gateways' published reports (`gate fleet report`).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SiteReport {
    pub site: String,
    pub period: String,
    /// Gateways whose genuine report was combined.
    pub gateways: Vec<String>,
    /// Enrolled gateways with no report, or one that is forged, and why: the numbers
    /// below then cover only part of the site.
    pub missing: Vec<(String, String)>,
    /// Distinct people with a template anywhere on the site, counted by their keyed
    /// subject references (the same person on two gateways counts once).
    pub face_subjects: u64,
    /// False when a gateway sent no references (no `[fleet] ref_key`): `face_subjects` is
    /// then the sum over gateways, an upper bound.
    pub face_subjects_distinct: bool,
    /// Templates held, summed over gateways.
    pub templates_held: u64,
    pub filing_threshold: u64,
    /// True from [`FILING_WARNING`] people on, well before the threshold.
    pub filing_warning: bool,
    pub entries_by_credential: BTreeMap<String, u64>,
    pub denied_by_credential: BTreeMap<String, u64>,
    pub consents_given: u64,
    pub consents_withdrawn: u64,
    pub erased: BTreeMap<String, u64>,
    pub plugin_failures: u64,
    pub fallback_decisions: u64,
    /// Gateways whose audit trail did not verify when they made their report.
    pub audit_broken: Vec<String>,
}

/// Combines the reports of one site's gateways for one month.
pub fn combine(site: &str, period: &str, reports: &[Report], missing: Vec<(String, String)>) -> SiteReport {
    let mut s = SiteReport {
        site: site.into(),
        period: period.into(),
        gateways: reports.iter().map(|r| r.gateway.clone()).collect(),
        missing,
        face_subjects: 0,
        face_subjects_distinct: true,
        templates_held: 0,
        filing_threshold: FILING_THRESHOLD,
        filing_warning: false,
        entries_by_credential: BTreeMap::new(),
        denied_by_credential: BTreeMap::new(),
        consents_given: 0,
        consents_withdrawn: 0,
        erased: BTreeMap::new(),
        plugin_failures: 0,
        fallback_decisions: 0,
        audit_broken: Vec::new(),
    };
    let add = |into: &mut BTreeMap<String, u64>, from: &BTreeMap<String, u64>| {
        for (k, v) in from {
            let e = into.entry(k.clone()).or_insert(0);
            *e = e.saturating_add(*v);
        }
    };
    let mut people = std::collections::BTreeSet::new();
    for r in reports {
        s.templates_held = s.templates_held.saturating_add(r.face.subjects_held);
        if r.face.subject_refs.len() as u64 != r.face.subjects_held {
            s.face_subjects_distinct = false;
        }
        people.extend(r.face.subject_refs.iter().cloned());
        add(&mut s.entries_by_credential, &r.entries_by_credential);
        add(&mut s.denied_by_credential, &r.denied_by_credential);
        add(&mut s.erased, &r.face.erased);
        s.consents_given = s.consents_given.saturating_add(r.face.consents_given);
        s.consents_withdrawn = s.consents_withdrawn.saturating_add(r.face.consents_withdrawn);
        s.plugin_failures = s.plugin_failures.saturating_add(r.plugins.failures);
        s.fallback_decisions = s.fallback_decisions.saturating_add(r.plugins.fallback_decisions);
        if !r.audit.whole {
            s.audit_broken.push(r.gateway.clone());
        }
    }
    s.face_subjects = if s.face_subjects_distinct { people.len() as u64 } else { s.templates_held };
    s.filing_warning = s.face_subjects >= FILING_WARNING;
    s
}

/// The JSON Schema of [`Report`], as published in `host/schema/report.json`.
pub fn schema() -> String {
    serde_json::to_string_pretty(&schemars::schema_for!(Report)).unwrap_or_default() + "\n"
}

/// The newest `report-generated` entry for a period, if any (reports are audited).
pub fn last_generated(audit: &AuditLog, period: &str) -> Result<Option<i64>, ReportError> {
    Ok(audit.entries(1)?.into_iter().rev().find(|e| e.action == "report-generated" && e.target == format!("period:{period}")).map(|e| e.seq))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn months_are_bounded_in_site_time() {
        let (a, b) = month_bounds("2026-11", 480).unwrap();
        // 2026-11-01T00:00+08:00 = 2026-10-31T16:00Z.
        assert_eq!(a, 1_793_462_400_000);
        assert_eq!(b - a, 30 * 86_400_000);
        let (_, dec_end) = month_bounds("2026-12", 0).unwrap();
        assert_eq!(dec_end, month_bounds("2027-01", 0).unwrap().0);
        for bad in ["2026-13", "2026-1", "26-11", "2026/11", "1999-01", "2026-00", "2026-11x"] {
            assert!(month_bounds(bad, 0).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_checked_in_schema_is_current_and_has_no_field_for_biometric_or_credential_data() {
        let want = schema();
        crate::assert_schema_checked_in("report.json", &want);
        fn names(v: &serde_json::Value, out: &mut Vec<String>) {
            match v {
                serde_json::Value::Object(m) => {
                    if let Some(serde_json::Value::Object(props)) = m.get("properties") {
                        out.extend(props.keys().cloned());
                    }
                    m.values().for_each(|x| names(x, out));
                }
                serde_json::Value::Array(a) => a.iter().for_each(|x| names(x, out)),
                _ => {}
            }
        }
        let mut fields = Vec::new();
        names(&serde_json::from_str(&want).unwrap(), &mut fields);
        assert!(fields.contains(&"entries_by_credential".to_string()), "{fields:?}");
        for f in &fields {
            for word in ["template", "image", "photo", "embedding", "vector", "pin", "card_number", "score", "name"] {
                assert!(f != word && !f.starts_with(&format!("{word}_")), "the report's schema has a field `{f}`");
            }
        }
    }

    #[test]
    fn a_site_counts_each_person_once_across_gateways_and_warns_well_before_the_threshold() {
        let key = crate::credentials::RefKey::generate().unwrap();
        let refs = |ids: &[&str]| ids.iter().map(|i| crate::credentials::keyed_subject_ref(&key, i)).collect::<Vec<_>>();
        let mut a = sample("gw-a");
        a.face.subjects_held = 2;
        a.face.subject_refs = refs(&["r-0001", "r-0003"]);
        let mut b = sample("gw-b");
        b.face.subjects_held = 1;
        b.face.subject_refs = refs(&["r-0003"]);
        let s = combine("site", "2026-11", &[a.clone(), b.clone()], vec![]);
        assert_eq!((s.face_subjects, s.templates_held, s.face_subjects_distinct), (2, 3, true));
        assert_eq!(s.entries_by_credential["card"], 10);
        assert!(!s.filing_warning);
        // A gateway without references: the sum, said to be an upper bound.
        b.face.subject_refs.clear();
        let s = combine("site", "2026-11", &[a.clone(), b], vec![]);
        assert_eq!((s.face_subjects, s.face_subjects_distinct), (3, false));
        // Many people: the warning comes at FILING_WARNING, before the threshold.
        let mut big = sample("gw-c");
        big.face.subjects_held = FILING_WARNING;
        big.face.subject_refs = (0..FILING_WARNING).map(|i| format!("subject:{i:024x}")).collect();
        assert!(combine("site", "2026-11", &[big], vec![]).filing_warning);
    }

    fn sample(gw: &str) -> Report {
        Report {
            format: "gate-report/1".into(),
            site: "site".into(),
            gateway: gw.into(),
            period: "2026-11".into(),
            from_ms: 0,
            to_ms: 1,
            generated_at_ms: 0,
            residents: Residents { total: 3, with_face: 1, without_face: 2 },
            entries_by_credential: [("card".to_string(), 5), ("face".to_string(), 2)].into(),
            denied_by_credential: BTreeMap::new(),
            face: FaceData {
                configured: true,
                subjects_held: 0,
                consents_given: 1,
                consents_withdrawn: 0,
                erased: BTreeMap::new(),
                filing_threshold: FILING_THRESHOLD,
                filing_warning: false,
                subject_refs: vec![],
            },
            retention: Retention { events_days: 90, alarms_days: 365, audit_days: 1095, face_unused_days: 0, face_erase_orphans: true, events_past_bound: 0 },
            audit: AuditStatus { entries: 0, whole: true, problem: None, last_checkpoint: None, actions: BTreeMap::new() },
            plugins: PluginIncidents { failures: 0, quarantines: 0, fallback_decisions: 0 },
            biometric_statement: vec![],
        }
    }

    #[test]
    fn html_escapes_what_it_shows_and_has_no_scripts() {
        let mut r = sample("gw");
        r.site = "<script>alert(1)</script>".into();
        r.face.subjects_held = 1;
        for lang in [Lang::Zh, Lang::En] {
            let page = html(&r, lang, 480);
            assert!(!page.contains("<script"), "{page}");
            assert!(page.contains("&lt;script&gt;"));
            assert!(page.contains("<svg"));
        }
        assert!(html(&r, Lang::Zh, 480).contains("门卡"));
    }
}
