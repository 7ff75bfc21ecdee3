//! Which faults the soak injects (`STAGEFLOW_SOAK_FAULTS`).

/// A fault the soak injects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// SecantusDB SIGKILLed and restarted on its data.
    Mongo,
    /// The broker SIGKILLed and restarted on its data.
    Broker,
    /// The pipeline's SSE connections cut (the emulator restarted).
    Sse,
}

/// The faults of `STAGEFLOW_SOAK_FAULTS` (comma-separated `mongo`, `broker`,
/// `sse`; all three, in that turn, when unset): leaving one out separates
/// what it does to memory from what the others do.
pub fn faults_from(text: Option<&str>) -> Result<Vec<Fault>, String> {
    let Some(text) = text else { return Ok(vec![Fault::Mongo, Fault::Broker, Fault::Sse]) };
    let faults = text
        .split(',')
        .map(str::trim)
        .filter(|word| !word.is_empty())
        .map(|word| match word {
            "mongo" => Ok(Fault::Mongo),
            "broker" => Ok(Fault::Broker),
            "sse" => Ok(Fault::Sse),
            other => {
                Err(format!("STAGEFLOW_SOAK_FAULTS: unknown fault '{other}' (expected mongo, broker or sse)"))
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    if faults.is_empty() {
        return Err("STAGEFLOW_SOAK_FAULTS names no fault (expected some of mongo, broker, sse)".into());
    }
    Ok(faults)
}
