# shellcheck shell=bash
# Helpers shared by deploy.sh and verify.sh. Source it; it defines functions only.

# load_env_file FILE: export every KEY=VALUE line of FILE, literally.
# The file is never executed: `$(...)`, backticks, `$VAR` and globs stay plain text, values keep their
# inner spaces, a trailing ` # comment` is dropped (as docker compose and chatstudio do), and a value in
# matching single or double quotes loses the quotes. Anything that is not KEY=VALUE is an error.
load_env_file() {
    local file=$1 line key value number=0
    if [[ ! -r $file ]]; then
        echo "cannot read $file" >&2
        return 1
    fi
    while IFS= read -r line || [[ -n $line ]]; do
        number=$((number + 1))
        line=${line%$'\r'}
        [[ $line =~ ^[[:space:]]*(#.*)?$ ]] && continue
        if [[ ! $line =~ ^[[:space:]]*(export[[:space:]]+)?([A-Za-z_][A-Za-z0-9_]*)=(.*)$ ]]; then
            echo "$file:$number: not a KEY=VALUE line" >&2
            return 1
        fi
        key=${BASH_REMATCH[2]}
        value=${BASH_REMATCH[3]}
        value=${value#"${value%%[![:space:]]*}"}
        if [[ $value =~ ^\"([^\"]*)\"[[:space:]]*(#.*)?$ ]] || [[ $value =~ ^\'([^\']*)\'[[:space:]]*(#.*)?$ ]]; then
            value=${BASH_REMATCH[1]}
        else
            value=${value%%[[:space:]]#*}
            value=${value%"${value##*[![:space:]]}"}
        fi
        export "$key=$value"
    done <"$file"
}

step() {
    printf '\n== %s\n' "$*"
}

die() {
    printf 'error: %s\n' "$*" >&2
    exit 1
}
