# bash completion for llmctl. Source it, or copy it to /etc/bash_completion.d/ or
# ~/.local/share/bash-completion/completions/llmctl.
_llmctl_instances() {
    local file=${LLMCTL_CONFIG:-instances.yaml} i
    for ((i = 1; i < COMP_CWORD; i++)); do
        case ${COMP_WORDS[i]} in -f|--file) file=${COMP_WORDS[i+1]} ;; esac
    done
    [ -r "$file" ] && sed -n 's/^[[:space:]]*-[[:space:]]*name:[[:space:]]*\([A-Za-z0-9_-]*\).*/\1/p' "$file"
}

_llmctl() {
    local cur prev command i
    cur=${COMP_WORDS[COMP_CWORD]}
    prev=${COMP_WORDS[COMP_CWORD-1]}
    for ((i = 1; i < COMP_CWORD; i++)); do
        case ${COMP_WORDS[i]} in
            up|status|logs|down|restart|wait|url|env|check) command=${COMP_WORDS[i]}; break ;;
        esac
    done
    if [[ $prev == --file || ($prev == -f && $command != logs) ]]; then
        COMPREPLY=($(compgen -f -- "$cur")); return
    fi
    if [[ -z $command ]]; then
        COMPREPLY=($(compgen -W "up status logs down restart wait url env check -f --file -h --help --version" -- "$cur")); return
    fi
    local options
    case $command in
        up) options="--no-wait --timeout --foreground --force --json -f --file" ;;
        wait) options="--timeout --json" ;;
        status) options="--json --watch -w --interval -f --file" ;;
        logs) options="-f --follow -n --lines --raw --file" ;;
        down) options="--json -f --file" ;;
        restart) options="--json -f --file" ;;
        check|env|url) options="-f --file" ;;
    esac
    if [[ $cur == -* ]]; then
        COMPREPLY=($(compgen -W "$options" -- "$cur"))
    elif [[ $command != check && $command != env ]]; then
        COMPREPLY=($(compgen -W "$(_llmctl_instances)" -- "$cur"))
    fi
}
complete -F _llmctl llmctl
